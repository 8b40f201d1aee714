require_relative "../networks"

module VagrantPlugins
  module Xhyve
    module Action
      # machine.start returns as soon as xhyve runs (a saved machine: once xhyve has restored its
      # state); WaitForSSH waits for the guest. In network user it passes the forwarded ports as
      # they are now: HandleForwardedPortCollisions may have moved a taken host port.
      class Start
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          saved = m.state.id == :saved
          env[:ui].info(saved ? "Resuming the machine from its saved state..." : "Starting the machine...")
          params = { id: m.id }
          if m.provider_config.network_mode == "user"
            params[:forwarded_ports] = Networks.forwarded_ports(m.config.vm.networks)
          end
          st = m.provider.client.call("machine.start", params)
          env[:ui].detail("xhyve runs (pid #{st["pid"]})")
          # The guest goes on with the boot whose shell Vagrant verified (communicator.rb).
          m.communicate.resumed! if saved && m.communicate.respond_to?(:resumed!)
          @app.call(env)
        end
      end
    end
  end
end
