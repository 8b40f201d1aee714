require "vagrant-xhyve/communicator"

# When the SSH communicator calls a guest ready: after Vagrant's own check (a login, then an empty
# command through the guest's shell) on a booted guest; after a login alone on a guest resumed
# from its saved state, once (a reboot later in the same run is checked as a boot).
RSpec.describe VagrantPlugins::Xhyve::Communicator do
  let(:machine) do
    double("machine", config: Struct.new(:ssh).new(Struct.new(:insert_key).new(false)))
  end
  let(:logins) { [] }
  let(:commands) { [] }
  subject(:comm) { described_class.new(machine) }

  # A guest whose logins succeed once `up` (a list the examples change) says so.
  def guest(up)
    allow(comm).to receive(:connect) do
      raise Vagrant::Errors::SSHConnectionRefused unless up.shift

      logins << :login
    end
    allow(comm).to receive(:execute) do |cmd, **_opts|
      commands << cmd
      0
    end
  end

  it "logs in and runs Vagrant's empty command on a booted guest" do
    guest([true])
    expect(comm.ready?).to be(true)
    expect(logins).to eq([:login])
    expect(commands).to eq([""])
  end

  it "logs in only on a resumed guest, and checks the shell at the next readiness check" do
    guest([false, true, true])
    comm.resumed!
    expect(comm.ready?).to be(false)
    expect(comm.ready?).to be(true)
    expect(commands).to eq([])
    expect(comm.ready?).to be(true)
    expect(logins).to eq([:login, :login])
    expect(commands).to eq([""])
  end
end
