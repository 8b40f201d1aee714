require_relative "../errors"

module VagrantPlugins
  module Xhyve
    module Action
      # Confirmed by DestroyConfirm: the provider kills a running xhyve and removes the machine's
      # directory. A machine the provider no longer knows is gone already.
      class Destroy
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          env[:ui].info("Destroying the machine and its disks...")
          begin
            m.provider.client.call("machine.destroy", id: m.id, force: true)
          rescue Errors::RpcError => e
            raise unless e.code == Errors::RpcError::NOT_FOUND
          end
          m.id = nil
          @app.call(env)
        end
      end
    end
  end
end
