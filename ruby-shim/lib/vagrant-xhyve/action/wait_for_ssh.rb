module VagrantPlugins
  module Xhyve
    module Action
      # The provider logs in until it works (up to config.vm.boot_timeout); Vagrant's own
      # WaitForCommunicator, next in the chain, then connects at once.
      class WaitForSSH
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          timeout = m.config.vm.boot_timeout
          env[:ui].info("Waiting for the guest to boot and answer SSH (up to #{timeout} s)...")
          r = m.provider.client.call("machine.wait_ssh", id: m.id, timeout: timeout)
          env[:ui].detail(format("SSH answered at %s:%d after %.1f s (%d attempts)",
                                 r["host"], r["port"], r["seconds"], r["attempts"]))
          @app.call(env)
        end
      end
    end
  end
end
