module VagrantPlugins
  module Xhyve
    module Action
      # `vagrant snapshot delete` (and `pop`, once it restored).
      class SnapshotDelete
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          name = env[:snapshot_name]
          env[:ui].info(I18n.t("vagrant.actions.vm.snapshot.deleting", name: name))
          m.provider.client.call("machine.snapshot.delete", id: m.id, name: name)
          env[:ui].success(I18n.t("vagrant.actions.vm.snapshot.deleted", name: name))
          @app.call(env)
        end
      end
    end
  end
end
