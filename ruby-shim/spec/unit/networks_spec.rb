require "vagrant-xhyve/networks"
require "vagrant-xhyve/cap/forwarded_ports"

# config.vm.network as the provider's named networks and NICs, and `vagrant port`.
RSpec.describe VagrantPlugins::Xhyve::Networks do
  let(:rpc_error) { VagrantPlugins::Xhyve::Errors::RpcError }

  # Records the calls; raises the error given for a method.
  let(:client) do
    Class.new do
      attr_reader :calls

      def initialize(errors)
        @errors = errors
        @calls = []
      end

      def call(method, params)
        @calls << [method, params]
        e = @errors[[method, params[:name]]]
        raise VagrantPlugins::Xhyve::Errors::RpcError.new(method, e) if e
        {}
      end
    end
  end

  describe ".network_of" do
    it "names a static address's network by its subnet (Vagrant's default /24) and keeps the ip" do
      expect(described_class.network_of(ip: "192.168.56.10"))
        .to eq([{ name: "vagrant-192.168.56.0-24", subnet: "192.168.56.0/24" },
                { network: "vagrant-192.168.56.0-24", ip: "192.168.56.10" }])
      expect(described_class.network_of(ip: "10.1.2.3", netmask: "255.255.0.0").first)
        .to eq(name: "vagrant-10.1.0.0-16", subnet: "10.1.0.0/16")
    end

    it "puts type: \"dhcp\" on the DHCP network, without an ip" do
      expect(described_class.network_of(type: "dhcp"))
        .to eq([{ name: "vagrant-dhcp", subnet: "172.28.128.0/24" }, { network: "vagrant-dhcp" }])
    end
  end

  describe ".errors" do
    it "refuses public_network with a clear message instead of ignoring it" do
      errs = described_class.errors([[:public_network, { bridge: "eth0" }]])
      expect(errs.size).to eq(1)
      expect(errs[0]).to include("public_network is not supported", "private_network", "forwarded_port")
    end

    it "explains a private_network it cannot make" do
      errs = described_class.errors([[:private_network, {}], [:private_network, { ip: "fd00::5" }],
                                     [:private_network, { ip: "300.1.1.1" }]])
      expect(errs[0]).to include("give ip:")
      expect(errs[1]).to include("only IPv4")
      expect(errs[2]).to include("private_network {:ip=>\"300.1.1.1\"}")
    end

    it "accepts forwarded ports and good private networks" do
      nets = [[:forwarded_port, { guest: 80, host: 8080 }], [:private_network, { ip: "192.168.56.10" }],
              [:private_network, { type: "dhcp" }]]
      expect(described_class.errors(nets)).to eq([])
    end
  end

  describe ".private" do
    it "gives one network and NIC per private_network, in order, and nothing else" do
      nets = [[:forwarded_port, { guest: 22, host: 2222, id: "ssh" }],
              [:private_network, { ip: "192.168.56.11" }], [:private_network, { type: "dhcp" }]]
      expect(described_class.private(nets).map(&:last))
        .to eq([{ network: "vagrant-192.168.56.0-24", ip: "192.168.56.11" }, { network: "vagrant-dhcp" }])
    end
  end

  describe ".ensure and .release" do
    let(:net) { { name: "vagrant-192.168.56.0-24", subnet: "192.168.56.0/24" } }

    it "creates each network once, using one that exists" do
      c = client.new({ ["network.create", net[:name]] => { "code" => -32003, "message" => "exists" } })
      described_class.ensure(c, [net, net])
      expect(c.calls).to eq([["network.create", net]])
    end

    it "passes on any other error of network.create" do
      c = client.new({ ["network.create", net[:name]] => { "code" => -32002, "message" => "overlaps" } })
      expect { described_class.ensure(c, [net]) }.to raise_error(rpc_error, /overlaps/)
    end

    it "removes the networks, leaving those still in use or gone" do
      c = client.new({ ["network.remove", "a"] => { "code" => -32002, "message" => "in use" },
                       ["network.remove", "b"] => { "code" => -32001, "message" => "no network" } })
      described_class.release(c, %w[a b c a])
      expect(c.calls.map(&:last)).to eq([{ name: "a" }, { name: "b" }, { name: "c" }])
      c = client.new({ ["network.remove", "a"] => { "code" => -32000, "message" => "broken" } })
      expect { described_class.release(c, ["a"]) }.to raise_error(rpc_error, /broken/)
    end
  end

  describe "vagrant port (capability forwarded_ports)" do
    # A machine whose provider's machine.list has `ports` for it and whose ssh_info is `ssh`.
    def machine(mode, ssh, ports, id: "m-1")
      client = Object.new
      listed = [{ "id" => "other", "forwarded_ports" => [{ "guest" => 1, "host" => 1 }] },
                { "id" => "m-1", "forwarded_ports" => ports }]
      client.define_singleton_method(:call) { |method, _params = {}| method == "machine.list" ? listed : nil }
      provider = Struct.new(:client, :ssh_info).new(client, ssh)
      Struct.new(:id, :provider_config, :provider).new(id, Struct.new(:network_mode).new(mode), provider)
    end

    # As machine.list has them: the defaults filled in, host ports as the last start set them.
    let(:ports) do
      [{ "guest" => 80, "host" => 2201, "protocol" => "tcp", "host_ip" => "127.0.0.1" },
       { "guest" => 53, "host" => 53, "protocol" => "udp", "host_ip" => "127.0.0.1" }]
    end
    let(:cap) { VagrantPlugins::Xhyve::Cap::ForwardedPorts }

    it "lists the provider's forwarded ports (auto_correct's included) and the SSH port it picked" do
      expect(cap.forwarded_ports(machine("user", { port: 40123 }, ports))).to eq(2201 => 80, 53 => 53, 40123 => 22)
    end

    it "has no SSH forward in network shared or while the machine is down, nothing when not created" do
      expect(cap.forwarded_ports(machine("shared", { port: 22 }, ports))).to eq(2201 => 80, 53 => 53)
      expect(cap.forwarded_ports(machine("user", nil, ports))).to eq(2201 => 80, 53 => 53)
      expect(cap.forwarded_ports(machine("user", nil, ports, id: nil))).to eq({})
    end
  end

  describe ".forwarded_ports" do
    it "gives the provider the Vagrantfile's forwarded ports but SSH's and disabled ones" do
      nets = [[:forwarded_port, { guest: 22, host: 2222, id: "ssh", auto_correct: true }],
              [:forwarded_port, { guest: 80, host: 8080, auto_correct: true, protocol: "tcp" }],
              [:forwarded_port, { guest: 81, host: 8081, disabled: true }],
              [:forwarded_port, { guest: 53, protocol: "udp", host_ip: "0.0.0.0" }], [:private_network, { ip: "192.168.56.10" }]]
      expect(described_class.forwarded_ports(nets))
        .to eq([{ guest: 80, host: 8080, protocol: "tcp" }, { guest: 53, protocol: "udp", host_ip: "0.0.0.0" }])
    end
  end
end

RSpec.describe VagrantPlugins::Xhyve::Plugin do
  it "registers `vagrant port` (provider capability forwarded_ports)" do
    caps = Vagrant.plugin("2").manager.provider_capabilities[:xhyve]
    expect(caps[:forwarded_ports]).to be(VagrantPlugins::Xhyve::Cap::ForwardedPorts)
  end

  it "validates the Vagrantfile's networks with the provider's config" do
    vm = Struct.new(:networks).new([[:public_network, {}]])
    machine = Struct.new(:config).new(Struct.new(:vm).new(vm))
    config = VagrantPlugins::Xhyve::Config.new.tap(&:finalize!)
    expect(config.validate(machine)["xhyve provider"].join).to include("public_network is not supported")
  end
end
