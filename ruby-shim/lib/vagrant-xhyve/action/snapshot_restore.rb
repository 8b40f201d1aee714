module VagrantPlugins
  module Xhyve
    module Action
      # `vagrant snapshot restore|pop`: the provider puts the snapshot's disks in place (and
      # stops a running machine first); a snapshot with a VM state leaves the machine saved, so
      # the start that follows resumes it.
      class SnapshotRestore
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          env[:ui].info(I18n.t("vagrant.actions.vm.snapshot.restoring", name: env[:snapshot_name]))
          m.provider.client.call("machine.snapshot.restore", id: m.id, name: env[:snapshot_name])
          @app.call(env)
        end
      end
    end
  end
end
