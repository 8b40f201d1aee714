module VagrantPlugins
  module Xhyve
    module Cap
      # `vagrant port`: { host port => guest port }. The provider forwards the Vagrantfile's
      # forwarded_port entries as given (Create passes them) and the SSH port it picked (in
      # ssh_info while the machine runs, network user only), so those are the ports.
      module ForwardedPorts
        def self.forwarded_ports(machine)
          ports = {}
          machine.config.vm.networks.each do |type, o|
            next if type != :forwarded_port || o[:id] == "ssh"
            ports[o[:host] || o[:guest]] = o[:guest]
          end
          ssh = machine.provider.ssh_info if machine.provider_config.network_mode == "user"
          ports[ssh[:port]] = 22 if ssh
          ports
        end
      end
    end
  end
end
