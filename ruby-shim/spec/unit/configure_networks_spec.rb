require "vagrant-xhyve/action/configure_networks"

# The guest's private networks: Vagrant's guest capability configure_networks when the guest has
# it, else the provider's DHCP (fixed leases) alone.
RSpec.describe VagrantPlugins::Xhyve::Action::ConfigureNetworks do
  # A guest that has configure_networks or not, recording what it was asked.
  def machine(networks, capable:, log:)
    guest = Object.new
    guest.define_singleton_method(:name) { capable ? :debian : :linux }
    guest.define_singleton_method(:capability?) { |cap| cap == :configure_networks && capable }
    guest.define_singleton_method(:capability) { |cap, *args| log << [:capability, cap, *args] }
    vm = Struct.new(:networks).new(networks)
    Struct.new(:config, :guest).new(Struct.new(:vm).new(vm), guest)
  end

  let(:nets) do
    [[:forwarded_port, { guest: 22, host: 2222, id: "ssh" }],
     [:private_network, { ip: "192.168.56.10" }],
     [:private_network, { type: "dhcp" }],
     [:private_network, { ip: "10.0.5.7", netmask: "255.255.0.0" }],
     [:private_network, { ip: "192.168.57.3", auto_config: false }]]
  end

  def run(machine, log)
    ui = Vagrant::UI::Silent.new
    %i[info detail].each { |k| allow(ui).to receive(k) { |msg| log << [k, msg] } }
    described_class.new(->(_env) { log << :booted }, {}).call(machine: machine, ui: ui)
  end

  it "asks a guest that can, once it is up, to configure each NIC by its interface number" do
    log = []
    run(machine(nets, capable: true, log: log), log)
    expect(log[0]).to eq(:booted)
    expect(log.last).to eq(
      [:capability, :configure_networks,
       [{ type: :static, ip: "192.168.56.10", netmask: "255.255.255.0", interface: 1 },
        { type: :dhcp, interface: 2 },
        { type: :static, ip: "10.0.5.7", netmask: "255.255.0.0", interface: 3 }]]
    )
  end

  it "leaves a guest without the capability to the provider's DHCP, and says so" do
    log = []
    run(machine(nets, capable: false, log: log), log)
    expect(log.none? { |e| e.is_a?(Array) && e[0] == :capability }).to be(true)
    expect(log.last[0]).to eq(:detail)
    expect(log.last[1]).to include("linux", "no configure_networks capability", "DHCP (fixed leases)")
  end

  it "does nothing without private networks" do
    log = []
    run(machine([[:forwarded_port, { guest: 80, host: 8080 }]], capable: true, log: log), log)
    expect(log).to eq([:booted])
  end
end
