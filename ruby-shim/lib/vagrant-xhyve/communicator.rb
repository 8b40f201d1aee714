require "timeout"
require Vagrant.source_root.join("plugins/communicators/ssh/communicator").to_s

module VagrantPlugins
  module Xhyve
    # Vagrant's SSH communicator (`config.vm.communicator = "xhyve_ssh"`, which the boxes built
    # here set) with two changes for slow guests (a nested kvm_pvm host), where each command
    # Vagrant runs costs the guest a process and seconds:
    # - before it re-uses its kept connection, Vagrant checks it by running an empty command
    #   within 5 s; that took longer, so every step of `vagrant up` dropped the connection and
    #   logged in again. This checks it with an SSH keepalive request instead, which the guest's
    #   SSH server answers itself; should that fail, Vagrant's own check runs.
    # - `ready?` runs an empty command to verify the shell each time it is asked (three times in
    #   an `up`); once per connection is enough, and none for a guest resumed from its saved
    #   state (`resumed!`): it carries on the boot whose shell Vagrant verified (and whose key it
    #   inserted) before the suspend, so a login is the check. Should the shell have been
    #   verified by no one (a machine suspended before its first `up` finished), the next command
    #   fails with Vagrant's own error instead.
    class Communicator < VagrantPlugins::CommunicatorSSH::Communicator
      # As long as Vagrant gives its own check.
      ALIVE_TIMEOUT = 5

      # The guest was resumed from a saved state (Action::Start says so).
      def resumed!
        @resumed = true
      end

      def ready?
        if @verified && @verified.equal?(@connection) && !@connection.closed? && answers?(@connection)
          return true
        end

        ready = @resumed ? logged_in? : super
        # Once: a reboot later in this run is a boot of its own.
        @resumed = false if ready
        @verified = @connection if ready
        ready
      end

      protected

      def connect(**opts)
        return super unless @connection && !@connection.closed? && answers?(@connection)

        @logger.debug("Re-using SSH connection (it answered a keepalive request).")
        block_given? ? yield(@connection) : nil
      end

      # Whether Vagrant can log in (as Vagrant's `ready?` checks it before it runs its command).
      def logged_in?
        connect
        true
      rescue Vagrant::Errors::VagrantError => e
        @logger.info("SSH not up: #{e.inspect}")
        false
      end

      # Whether the server answers a global request (either way: a reply is an answer).
      def answers?(connection)
        answered = false
        Timeout.timeout(ALIVE_TIMEOUT) do
          connection.send_global_request("keepalive@openssh.com") { answered = true }
          connection.loop(0.05) { !answered }
        end
        answered
      rescue StandardError, Timeout::Error => e
        @logger.info("Kept SSH connection did not answer a keepalive request: #{e.class}")
        false
      end
    end
  end
end
