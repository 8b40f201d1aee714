require "socket"
require "tmpdir"
require "vagrant-xhyve/networks"
require "vagrant-xhyve/action/prepare_forwarded_port_collision_params"

# Taken host ports of forwarded ports: our settings, then Vagrant's own
# HandleForwardedPortCollisions, run for real against ports this spec holds with TCP listeners.
RSpec.describe VagrantPlugins::Xhyve::Action::PrepareForwardedPortCollisionParams do
  around do |ex|
    Dir.mktmpdir("xhyve-fp") do |d|
      @data_dir = Pathname.new(d)
      ex.run
    end
  end

  # A port that a listener holds (on 127.0.0.1, where the provider forwards by default).
  def held_port
    s = TCPServer.new("127.0.0.1", 0)
    (@held ||= []) << s
    s.addr[1]
  end

  after { (@held || []).each(&:close) }

  def machine(networks, mode: "user", range: 47_100..47_140)
    env = Object.new
    data_dir = @data_dir
    env.define_singleton_method(:lock) { |_name, &blk| blk.call }
    env.define_singleton_method(:data_dir) { data_dir }
    vm = Struct.new(:networks, :usable_port_range).new(networks, range)
    Struct.new(:config, :provider_config, :env, :name).new(
      Struct.new(:vm).new(vm), Struct.new(:network_mode).new(mode), env, :default
    )
  end

  let(:ui) { Vagrant::UI::Silent.new }

  # Ours, then Vagrant's builtin, then `after` (what Start would see).
  def run(machine, &after)
    handle = Vagrant::Action::Builtin::HandleForwardedPortCollisions.new(after || ->(_env) {}, {})
    described_class.new(handle, {}).call(machine: machine, ui: ui)
  end

  it "moves a taken host port with auto_correct to a free one, which Start then passes on" do
    taken = held_port
    web = { guest: 80, host: taken, host_ip: "127.0.0.1", auto_correct: true }
    m = machine([[:forwarded_port, web]])
    said = []
    allow(ui).to receive(:info) { |msg| said << msg }
    passed = nil
    run(m) { |_env| passed = VagrantPlugins::Xhyve::Networks.forwarded_ports(m.config.vm.networks) }
    expect(web[:host]).not_to eq(taken)
    expect(47_100..47_140).to cover(web[:host])
    expect(passed).to eq([{ guest: 80, host: web[:host], host_ip: "127.0.0.1" }])
    expect(said.join).to include(taken.to_s, web[:host].to_s)
  end

  it "stops with Vagrant's ForwardPortCollision before the start without auto_correct" do
    taken = held_port
    m = machine([[:forwarded_port, { guest: 80, host: taken, host_ip: "127.0.0.1" }]])
    started = false
    expect { run(m) { started = true } }.to raise_error(Vagrant::Errors::ForwardPortCollision, /#{taken}/)
    expect(started).to be(false)
  end

  it "leaves free ports, Vagrant's SSH forward (the provider picks SSH's port) and other modes alone" do
    ssh = { guest: 22, host: held_port, host_ip: "127.0.0.1", id: "ssh", auto_correct: false }
    free = { guest: 8080, host: 47_150, host_ip: "127.0.0.1" }
    before = [ssh.dup, free.dup]
    run(machine([[:forwarded_port, ssh], [:forwarded_port, free]]))
    expect([ssh, free]).to eq(before)
    shared = { guest: 80, host: held_port, host_ip: "127.0.0.1" }
    run(machine([[:forwarded_port, shared]], mode: "shared"))
    expect(shared[:host]).to eq(@held.last.addr[1])
  end
end
