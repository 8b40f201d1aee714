module VagrantPlugins
  module Xhyve
    module Cap
      # `vagrant port`: { host port => guest port }. The forwarded ports are the provider's (what
      # machine.list has: the Vagrantfile's, with the host ports auto_correct moved at the last
      # start), and the SSH port it picked (in ssh_info while the machine runs, network user only).
      module ForwardedPorts
        def self.forwarded_ports(machine)
          ports = {}
          return ports unless machine.id

          entry = machine.provider.client.call("machine.list").find { |e| e["id"] == machine.id }
          (entry ? entry["forwarded_ports"] : []).each { |f| ports[f["host"]] = f["guest"] }
          ssh = machine.provider.ssh_info if machine.provider_config.network_mode == "user"
          ports[ssh[:port]] = 22 if ssh
          ports
        end
      end
    end
  end
end
