require "pathname"
require "tmpdir"

require "vagrant-xhyve/action/wait_for_ssh"

# The provider's SSH wait, as `vagrant up` runs it: SSH answers and the chain goes on, or the
# machine's VMM ended during the wait and the error says how, at once.
RSpec.describe VagrantPlugins::Xhyve::Action::WaitForSSH do
  let(:errors) { VagrantPlugins::Xhyve::Errors }
  let(:client) { double("client") }
  let(:provider) { double("provider", client: client) }
  let(:data_dir) { Pathname.new(Dir.mktmpdir("wait-for-ssh")) }
  let(:machine) do
    config = Struct.new(:vm, :ssh).new(Struct.new(:boot_timeout).new(600), Struct.new(:private_key_path).new(nil))
    Struct.new(:id, :config, :data_dir, :provider).new("m-1", config, data_dir, provider)
  end
  let(:log) { [] }
  let(:ui) do
    Vagrant::UI::Silent.new.tap do |u|
      %i[info detail].each { |k| allow(u).to receive(k) { |msg| log << [k, msg] } }
    end
  end

  after { FileUtils.rm_rf(data_dir) }

  def run
    described_class.new(->(_env) { log << :next }, {}).call(machine: machine, ui: ui)
  end

  def wrong_state
    errors::RpcError.new("machine.wait_ssh", "code" => -32009, "message" => "machine m-1 (n) is aborted: start it first",
                                             "data" => { "state" => "aborted" })
  end

  it "waits for SSH up to the boot timeout, then goes on" do
    expect(client).to receive(:call).with("machine.wait_ssh", { id: "m-1", timeout: 600 }).and_return(
      "host" => "127.0.0.1", "port" => 2222, "seconds" => 12.5, "attempts" => 3,
      "private_key_path" => ["/k"]
    )
    run
    expect(log).to eq([[:info, "Waiting for the guest to boot and answer SSH (up to 600 s)..."],
                       [:detail, "SSH answered at 127.0.0.1:2222 after 12.5 s (3 attempts)"], :next])
  end

  it "stops at once when the machine's VMM ends, quoting how (a guest panic's console lines)" do
    reason = "the guest kernel panicked (exit status 6); its console ended with:\n" \
             "[    2.5] Kernel panic - not syncing: Requested init /nope failed (error -2)."
    expect(client).to receive(:call).with("machine.wait_ssh", anything).and_raise(wrong_state)
    expect(provider).to receive(:machine_state).and_return("id" => "m-1", "state" => "aborted",
                                                            "exit_status" => 6, "exit_reason" => reason)
    expect { run }.to raise_error(errors::Error) { |e|
      expect(e.message).to eq("The machine's VMM ended before the guest answered SSH: the machine is aborted: #{reason}")
    }
    expect(log).not_to include(:next)
  end

  it "passes other errors on as they are (a timeout, a machine the provider no longer knows)" do
    timeout = errors::RpcError.new("machine.wait_ssh", "code" => -32011, "message" => "SSH to machine m-1 failed: banner")
    expect(client).to receive(:call).and_raise(timeout)
    expect { run }.to raise_error(timeout)

    gone = wrong_state
    expect(client).to receive(:call).and_raise(gone)
    expect(provider).to receive(:machine_state).and_return(nil)
    expect { run }.to raise_error(gone)
  end
end
