module VagrantPlugins
  module Xhyve
    module Action
      # machine.start returns as soon as xhyve runs (a saved machine: once xhyve has restored its
      # state); WaitForSSH waits for the guest.
      class Start
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          env[:ui].info(m.state.id == :saved ? "Resuming the machine from its saved state..." : "Starting the machine...")
          st = m.provider.client.call("machine.start", id: m.id)
          env[:ui].detail("xhyve runs (pid #{st["pid"]})")
          @app.call(env)
        end
      end
    end
  end
end
