require "vagrant-xhyve/action/wait_for_ready"

# The wait for Vagrant's communicator after the provider's: it goes on once the communicator is
# ready, and ends with Vagrant's own errors when the guest never gets ready or the machine stops
# running meanwhile.
RSpec.describe VagrantPlugins::Xhyve::Action::WaitForReady do
  let(:communicate) { double("communicate") }
  let(:states) { [] }
  let(:machine) do
    m = double("machine", communicate: communicate)
    allow(m).to receive(:config).and_return(Struct.new(:vm).new(Struct.new(:boot_timeout).new(300)))
    allow(m).to receive(:state) { Struct.new(:id).new(states.size > 1 ? states.shift : states.first) }
    m
  end
  let(:log) { [] }
  let(:ui) { Vagrant::UI::Silent.new.tap { |u| allow(u).to receive(:output) { |msg| log << msg } } }

  def run
    described_class.new(->(_env) { log << :next }, {}).call(machine: machine, ui: ui)
  end

  it "goes on once the communicator is ready, saying what Vagrant's own wait says" do
    states.push(:running)
    expect(communicate).to receive(:wait_for_ready).with(300) { sleep 0.3; true }
    run
    expect(log).to eq([I18n.t("vagrant.boot_waiting"), I18n.t("vagrant.boot_completed"), :next])
  end

  it "ends with Vagrant's boot timeout when the communicator never gets ready" do
    states.push(:running)
    expect(communicate).to receive(:wait_for_ready).and_return(false)
    expect { run }.to raise_error(Vagrant::Errors::VMBootTimeout)
    expect(log).not_to include(:next)
  end

  it "ends with Vagrant's bad-state error when the machine stops running during the wait" do
    states.push(:running, :aborted)
    allow(communicate).to receive(:wait_for_ready) { sleep 10; true }
    expect { run }.to raise_error(Vagrant::Errors::VMBootBadState, /aborted/)
    expect(log).not_to include(:next)
  end
end
