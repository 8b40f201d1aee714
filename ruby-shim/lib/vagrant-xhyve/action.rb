require "vagrant/action/builder"

module VagrantPlugins
  module Xhyve
    # The action chains. Ours (action/*.rb) are each one call to xhyve-provider; the rest is
    # Vagrant's builtins (boxes, provisioners, synced folders, SSH, confirmation, packaging).
    module Action
      include Vagrant::Action::Builtin

      dir = File.expand_path("action", __dir__)
      autoload :CheckRunning, File.join(dir, "check_running")
      autoload :Create, File.join(dir, "create")
      autoload :Destroy, File.join(dir, "destroy")
      autoload :ImportBox, File.join(dir, "import_box")
      autoload :IsCreated, File.join(dir, "is_created")
      autoload :Package, File.join(dir, "package")
      autoload :Start, File.join(dir, "start")
      autoload :Stop, File.join(dir, "stop")
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

      # Boots a stopped machine; provisioners and synced folders run once SSH works (both
      # middlewares act after the rest of the chain returns).
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
            b2.use Start
            b2.use WaitForSSH
            b2.use WaitForCommunicator, [:running]
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
    end
  end
end
