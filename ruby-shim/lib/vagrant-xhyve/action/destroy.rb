require_relative "../errors"
require_relative "../networks"

module VagrantPlugins
  module Xhyve
    module Action
      # Confirmed by DestroyConfirm: the provider kills a running xhyve and removes the machine's
      # directory. A machine the provider no longer knows is gone already. Its private networks
      # go too when no other machine is on them.
      class Destroy
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          env[:ui].info("Destroying the machine and its disks...")
          client = m.provider.client
          begin
            client.call("machine.destroy", id: m.id, force: true)
          rescue Errors::RpcError => e
            raise unless e.code == Errors::RpcError::NOT_FOUND
          end
          m.id = nil
          Networks.release(client, Networks.private(m.config.vm.networks).map { |n, _| n[:name] })
          @app.call(env)
        end
      end
    end
  end
end
