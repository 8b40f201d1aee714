require "ipaddr"

require_relative "errors"

module VagrantPlugins
  module Xhyve
    # config.vm.network "private_network" as the provider's named networks (provider/API.md,
    # "Named networks"): each subnet a network of its own, made on demand and removed with the
    # last machine on it; the machine's NICs after the first join them. "public_network" is
    # refused: the provider has no bridge to the host's LAN.
    module Networks
      # Vagrant's default netmask for a private_network ip; VirtualBox's subnet for type: "dhcp".
      DEFAULT_NETMASK = "255.255.255.0".freeze
      DHCP_NAME = "vagrant-dhcp".freeze
      DHCP_SUBNET = "172.28.128.0/24".freeze

      module_function

      # The problems of the Vagrantfile's networks, as config validation lists them.
      def errors(vm_networks)
        vm_networks.filter_map do |type, o|
          case type
          when :public_network
            "public_network is not supported by xhyve: it has no bridge to the host's LAN. Use " \
              "private_network (machines reach each other) and forwarded_port (the host reaches them)"
          when :private_network
            begin
              network_of(o)
              nil
            rescue ArgumentError, IPAddr::Error => e
              "private_network #{o.slice(:ip, :type, :netmask).inspect}: #{e.message}"
            end
          end
        end
      end

      # [{name, subnet}, nic] of one private_network's options: the network its subnet names
      # (vagrant-192.168.56.0-24), with the static ip; or the DHCP network for type: "dhcp".
      def network_of(opts)
        if opts[:ip].nil? || opts[:ip].to_s.empty?
          raise ArgumentError, "give ip: \"ADDRESS\" or type: \"dhcp\"" unless opts[:type].to_s == "dhcp"
          return [{ name: DHCP_NAME, subnet: DHCP_SUBNET }, { network: DHCP_NAME }]
        end
        ip = IPAddr.new(opts[:ip].to_s)
        raise ArgumentError, "only IPv4 addresses are supported" unless ip.ipv4?
        mask = IPAddr.new(opts[:netmask] || DEFAULT_NETMASK)
        prefix = mask.to_i.to_s(2).count("1")
        net = ip.mask(prefix)
        name = "vagrant-#{net}-#{prefix}"
        [{ name: name, subnet: "#{net}/#{prefix}" }, { network: name, ip: ip.to_s }]
      end

      # config.vm.network "forwarded_port" entries as the provider takes them, except disabled
      # ones and Vagrant's default SSH forward (id "ssh"): the provider forwards SSH itself, to a
      # port it picks. The host ports are as Vagrant has them (after auto_correct moved any).
      def forwarded_ports(vm_networks)
        vm_networks.filter_map do |type, o|
          next if type != :forwarded_port || o[:id] == "ssh" || o[:disabled]

          { guest: o[:guest], host: o[:host], protocol: o[:protocol], host_ip: o[:host_ip] }.compact
        end
      end

      # The networks and NICs of the Vagrantfile's private_networks, in order.
      def private(vm_networks)
        vm_networks.filter_map { |type, o| network_of(o) if type == :private_network }
      end

      # The private_networks as Vagrant's guest capability configure_networks takes them: the
      # guest's interface number (its NICs in order: 0 is the management NIC, then one per
      # private_network), type :static with ip and netmask, or :dhcp; not those with
      # auto_config: false.
      def guest_networks(vm_networks)
        opts = vm_networks.filter_map { |type, o| o if type == :private_network }
        opts.each_with_index.filter_map do |o, i|
          next if o[:auto_config] == false
          next { type: :dhcp, interface: i + 1 } if o[:ip].nil? || o[:ip].to_s.empty?

          { type: :static, ip: o[:ip].to_s, netmask: o[:netmask] || DEFAULT_NETMASK, interface: i + 1 }
        end
      end

      # network.create for each network (one that exists already is used as it is).
      def ensure(client, networks)
        networks.uniq.each do |n|
          client.call("network.create", n)
        rescue Errors::RpcError => e
          raise unless e.code == Errors::RpcError::ALREADY_EXISTS
        end
      end

      # network.remove for each network no machine uses any more (the daemon refuses the rest).
      def release(client, names)
        names.uniq.each do |name|
          client.call("network.remove", name: name)
        rescue Errors::RpcError => e
          raise unless [Errors::RpcError::IN_USE, Errors::RpcError::NOT_FOUND].include?(e.code)
        end
      end
    end
  end
end
