module VagrantPlugins
  module Xhyve
    module Action
      # `vagrant suspend`: the provider saves the whole VM into the machine's directory and ends
      # its xhyve (state saved).
      class Suspend
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          env[:ui].info("Saving the machine's state...")
          m.provider.client.call("machine.suspend", id: m.id)
          @app.call(env)
        end
      end
    end
  end
end
