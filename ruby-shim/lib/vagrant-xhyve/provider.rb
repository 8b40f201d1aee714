require "vagrant"

require_relative "action"
require_relative "client"
require_relative "errors"

module VagrantPlugins
  module Xhyve
    class Provider < Vagrant.plugin("2", :provider)
      STATES = {
        not_created: "The machine does not exist. `vagrant up` creates and starts it.",
        stopped: "The machine is powered off. `vagrant up` starts it.",
        running: "The machine runs. `vagrant halt` stops it; `vagrant ssh` logs in.",
        saved: "The machine is suspended (its state is saved). `vagrant up` or `vagrant resume` " \
               "resumes it; `vagrant halt` drops the state.",
        aborted: "The machine's VMM ended on its own (a guest kernel panic, a crash, a kill, a " \
                 "triple fault). `vagrant up` starts it again; its console.log and vmm.log say more.",
      }.freeze

      # xhyve-rs runs on Linux KVM.
      def self.usable?(raise_error = false)
        return true if File.exist?("/dev/kvm")
        raise Errors::Error, "xhyve needs KVM and /dev/kvm is missing" if raise_error
        false
      end

      def initialize(machine)
        @machine = machine
      end

      def action(name)
        Action.respond_to?("action_#{name}") ? Action.send("action_#{name}") : nil
      end

      def client
        c = @machine.provider_config
        Client.new(provider_bin: c.provider_bin, xhyve_bin: c.xhyve_bin, ui: @machine.ui)
      end

      # The provider's record of the machine, nil when there is none.
      def machine_state
        return nil unless @machine.id
        client.call("machine.state", id: @machine.id)
      rescue Errors::RpcError => e
        raise unless e.code == Errors::RpcError::NOT_FOUND
        nil
      end

      def state
        st = machine_state
        id = st ? st["state"].to_sym : :not_created
        long = STATES.fetch(id, "")
        long += " (#{st["exit_reason"]})" if id == :aborted && st["exit_reason"]
        Vagrant::MachineState.new(id, id.to_s, long)
      end

      # host, port, username and private_key_path as the provider reports them; nil until the
      # machine runs (Vagrant then says SSH is not ready).
      def ssh_info
        return nil unless @machine.id
        info = client.call("machine.ssh_info", id: @machine.id)
        info&.transform_keys(&:to_sym)
      rescue Errors::RpcError => e
        raise unless e.code == Errors::RpcError::NOT_FOUND
        nil
      end

      def to_s
        id = @machine.id ? " (#{@machine.id})" : ""
        "xhyve#{id}"
      end
    end
  end
end
