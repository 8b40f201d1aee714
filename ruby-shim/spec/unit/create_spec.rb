require "pathname"

require "vagrant-xhyve/action/create"

# `vagrant up`'s machine.create: the Vagrantfile's settings reach the daemon, and what it leaves
# unset is left to the box (the daemon reads its metadata.json).
RSpec.describe VagrantPlugins::Xhyve::Action::Create do
  let(:calls) { [] }
  let(:client) do
    calls = self.calls
    Object.new.tap do |c|
      c.define_singleton_method(:call) do |method, params|
        calls << [method, params]
        { "id" => "m-1", "uuid" => "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01", "path" => "/x/m-1" }
      end
    end
  end

  # A machine of the box acme/tiny 1.0 in project /p, with the provider settings given (finalized).
  def machine(**settings)
    config = VagrantPlugins::Xhyve::Config.new
    settings.each { |k, v| config.public_send("#{k}=", v) }
    config.finalize!
    box = Struct.new(:name, :version, :metadata).new("acme/tiny", Gem::Version.new("1.0"), {})
    vm = Struct.new(:networks, :hostname).new([], nil)
    Struct.new(:id, :name, :box, :provider_config, :config, :env, :provider).new(
      nil, :default, box, config, Struct.new(:vm).new(vm), Struct.new(:root_path).new(Pathname.new("/p")),
      Struct.new(:client).new(client)
    )
  end

  def create(m)
    reached = false
    described_class.new(->(_env) { reached = true }, {}).call(machine: m, ui: Vagrant::UI::Silent.new)
    expect(reached).to be(true)
    expect(m.id).to eq("m-1")
    calls
  end

  it "passes only the settings the Vagrantfile set: the firmware is the box's unless it is set" do
    expect(create(machine)).to eq(
      [["machine.create", { box: { name: "acme/tiny", version: "1.0" }, name: "p_default", disks: [],
                            network: { mode: "user", forwarded_ports: [] } }]]
    )
  end

  %w[efi kexec].each do |firmware|
    it "passes firmware = #{firmware.inspect} to machine.create" do
      expect(create(machine(firmware: firmware, cpus: 2))).to eq(
        [["machine.create", { box: { name: "acme/tiny", version: "1.0" }, name: "p_default", cpus: 2,
                              firmware: firmware, disks: [], network: { mode: "user", forwarded_ports: [] } }]]
      )
    end
  end
end
