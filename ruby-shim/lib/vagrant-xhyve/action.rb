require "vagrant/action/builder"

module VagrantPlugins
  module Xhyve
    # The action chains. Ours (action/*.rb) are each one call to xhyve-provider; the rest is
    # Vagrant's builtins (boxes, provisioners, synced folders, SSH, confirmation, packaging).
    module Action
      include Vagrant::Action::Builtin

      dir = File.expand_path("action", __dir__)
      autoload :CheckRunning, File.join(dir, "check_running")
      autoload :ConfigureNetworks, File.join(dir, "configure_networks")
      autoload :Create, File.join(dir, "create")
      autoload :Destroy, File.join(dir, "destroy")
      autoload :ImportBox, File.join(dir, "import_box")
      autoload :IsCreated, File.join(dir, "is_created")
      autoload :Package, File.join(dir, "package")
      autoload :PrepareForwardedPortCollisionParams, File.join(dir, "prepare_forwarded_port_collision_params")
      autoload :SnapshotDelete, File.join(dir, "snapshot_delete")
      autoload :SnapshotRestore, File.join(dir, "snapshot_restore")
      autoload :SnapshotSave, File.join(dir, "snapshot_save")
      autoload :Start, File.join(dir, "start")
      autoload :Stop, File.join(dir, "stop")
      autoload :Suspend, File.join(dir, "suspend")
      autoload :WaitForReady, File.join(dir, "wait_for_ready")
      autoload :WaitForSSH, File.join(dir, "wait_for_ssh")

      def self.action_up
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Call, IsCreated do |env, b2|
            unless env[:result]
              b2.use HandleBox
              b2.use ImportBox
              b2.use Create
            end
          end
          b.use action_start
        end
      end

      # Boots a stopped machine (resumes a saved one: machine.start does); provisioners and synced folders run once SSH works (both
      # middlewares act after the rest of the chain returns). Taken host ports of forwarded
      # ports are Vagrant's to handle first (auto_correct), as with VirtualBox; the guest's
      # private networks are configured once it answers, before the provisioners run.
      def self.action_start
        Vagrant::Action::Builder.new.tap do |b|
          b.use Call, IsState, :running do |env, b2|
            if env[:result]
              b2.use Message, "The machine is already running."
              next
            end
            b2.use Provision
            b2.use SyncedFolderCleanup
            b2.use SyncedFolders
            b2.use PrepareForwardedPortCollisionParams
            b2.use HandleForwardedPortCollisions
            b2.use ConfigureNetworks
            b2.use Start
            b2.use WaitForSSH
            b2.use WaitForReady
          end
        end
      end

      def self.action_halt
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Call, IsState, :running do |env, b2|
            if env[:result]
              b2.use Stop
            else
              b2.use Message, "The machine is not running."
            end
          end
        end
      end

      def self.action_reload
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Call, IsCreated do |env, b2|
            unless env[:result]
              b2.use Message, I18n.t("vagrant.commands.common.vm_not_created")
              next
            end
            b2.use action_halt
            b2.use action_start
          end
        end
      end

      def self.action_destroy
        Vagrant::Action::Builder.new.tap do |b|
          b.use Call, IsCreated do |env, b2|
            unless env[:result]
              b2.use Message, I18n.t("vagrant.commands.common.vm_not_created")
              next
            end
            b2.use Call, DestroyConfirm do |env2, b3|
              if env2[:result]
                b3.use ProvisionerCleanup, :before
                b3.use Destroy
              else
                b3.use Message, I18n.t("vagrant.commands.destroy.will_not_destroy",
                                       name: env2[:machine].name)
              end
            end
          end
        end
      end

      def self.action_provision
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use CheckRunning
          b.use Provision
          b.use SyncedFolders
        end
      end

      def self.action_ssh
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use CheckRunning
          b.use SSHExec
        end
      end

      def self.action_ssh_run
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use CheckRunning
          b.use SSHRun
        end
      end

      # The machine is packaged stopped, so that its disks are consistent.
      def self.action_package
        Vagrant::Action::Builder.new.tap do |b|
          b.use Call, IsCreated do |env, b2|
            unless env[:result]
              b2.use Message, I18n.t("vagrant.commands.common.vm_not_created")
              next
            end
            b2.use action_halt
            b2.use Package
          end
        end
      end

      # `vagrant suspend`: the VM's state saved, its xhyve ended.
      def self.action_suspend
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Call, IsState, :running do |env, b2|
            if env[:result]
              b2.use Suspend
            else
              b2.use Message, "The machine is not running."
            end
          end
        end
      end

      # `vagrant resume` (and `vagrant up` of a suspended machine, through action_start).
      # As VirtualBox resumes: the guest carries on as it was (its folders mounted, its networks
      # set, its SSH up), so only the ports are checked before machine.start resumes it, and
      # Vagrant's communicator is the one wait (each guest command costs seconds on slow hosts).
      def self.action_resume
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Call, IsState, :saved do |env, b2|
            if env[:result]
              b2.use Provision
              b2.use PrepareForwardedPortCollisionParams
              b2.use HandleForwardedPortCollisions
              b2.use Start
              b2.use WaitForReady
            else
              b2.use Message, "The machine is not suspended."
            end
          end
        end
      end

      def self.action_snapshot_save
        on_created(SnapshotSave)
      end

      def self.action_snapshot_delete
        on_created(SnapshotDelete)
      end

      # `step` for a machine that exists; Vagrant's "not created" message otherwise.
      def self.on_created(step)
        Vagrant::Action::Builder.new.tap do |b|
          b.use Call, IsCreated do |env, b2|
            if env[:result]
              b2.use step
            else
              b2.use Message, I18n.t("vagrant.commands.common.vm_not_created")
            end
          end
        end
      end
      private_class_method :on_created

      # As VirtualBox's: restore, then (pop) delete the snapshot, then start (the default; a
      # snapshot of a running machine resumes where it was taken).
      def self.action_snapshot_restore
        Vagrant::Action::Builder.new.tap do |b|
          b.use Call, IsCreated do |env, b2|
            raise Vagrant::Errors::VMNotCreatedError unless env[:result]

            b2.use SnapshotRestore
            b2.use Call, IsEnvSet, :snapshot_delete do |env2, b3|
              b3.use action_snapshot_delete if env2[:result]
            end
            b2.use Call, IsEnvSet, :snapshot_start do |env2, b3|
              b3.use action_start if env2[:result]
            end
          end
        end
      end
    end
  end
end
