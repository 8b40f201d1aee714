module VagrantPlugins
  module Xhyve
    module Action
      # `vagrant halt`: the ACPI power button, then SIGKILL once config.vm.graceful_halt_timeout
      # has passed (the provider does both); `vagrant halt -f`: SIGKILL at once.
      class Stop
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          params = { id: m.id }
          if env[:force_halt]
            env[:ui].info("Forcing the machine off...")
            params[:force] = true
          else
            timeout = m.config.vm.graceful_halt_timeout
            env[:ui].info("Shutting down (ACPI power button; forced after #{timeout} s)...")
            params[:timeout] = timeout
          end
          st = m.provider.client.call("machine.stop", params)
          env[:ui].detail(st["exit_reason"]) if st["exit_reason"]
          @app.call(env)
        end
      end
    end
  end
end
