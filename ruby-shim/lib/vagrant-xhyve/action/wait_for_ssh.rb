module VagrantPlugins
  module Xhyve
    module Action
      # The provider logs in until it works (up to config.vm.boot_timeout); Vagrant's
      # communicator (WaitForReady, next in the chain) then connects at once. A machine whose VMM ends
      # meanwhile (a guest kernel panic, a crash) ends the wait at once: the error quotes how it
      # ended (for a panic, the console's last lines), as `vagrant status` then shows it.
      class WaitForSSH
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          timeout = m.config.vm.boot_timeout
          env[:ui].info("Waiting for the guest to boot and answer SSH (up to #{timeout} s)...")
          params = { id: m.id, timeout: timeout }
          key = inserted_key(m)
          params[:private_key_path] = [key.to_s] if key
          r = begin
            m.provider.client.call("machine.wait_ssh", params)
          rescue Errors::RpcError => e
            raise unless e.code == Errors::RpcError::WRONG_STATE
            raise ended(m) || e
          end
          env[:ui].detail(format("SSH answered at %s:%d after %.1f s (%d attempts)%s",
                                 r["host"], r["port"], r["seconds"], r["attempts"],
                                 key ? ", key #{r["private_key_path"].first}" : ""))
          @app.call(env)
        end

        private

        # The error for a machine that stopped running during the wait; nil when the provider
        # no longer knows it.
        def ended(m)
          st = m.provider.machine_state
          return nil unless st
          Errors::Error.new("The machine's VMM ended before the guest answered SSH: the machine " \
                            "is #{st["state"]}: #{st["exit_reason"] || "no reason recorded"}")
        end

        # The key Vagrant put in the guest in place of the insecure one (config.ssh.insert_key),
        # which it logs in with from then on (as Vagrant::Machine#ssh_info picks it); nil: the
        # provider's insecure key.
        def inserted_key(m)
          return nil if m.config.ssh.private_key_path
          key = m.data_dir.join("private_key")
          key.file? ? key : nil
        end
      end
    end
  end
end
