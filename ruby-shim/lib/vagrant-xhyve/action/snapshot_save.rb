module VagrantPlugins
  module Xhyve
    module Action
      # `vagrant snapshot save|push`: the machine's disks and, when it runs, its VM state.
      class SnapshotSave
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          name = env[:snapshot_name]
          env[:ui].info(I18n.t("vagrant.actions.vm.snapshot.saving", name: name))
          m.provider.client.call("machine.snapshot.save", id: m.id, name: name)
          env[:ui].success(I18n.t("vagrant.actions.vm.snapshot.saved", name: name))
          @app.call(env)
        end
      end
    end
  end
end
