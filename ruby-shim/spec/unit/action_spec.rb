# Which middlewares each action chains, in which order, and what each Call branch runs: the
# stacks of the Vagrant::Action::Builder objects action.rb returns.
RSpec.describe VagrantPlugins::Xhyve::Action do
  let(:builtin) { Vagrant::Action::Builtin }
  let(:ours) { described_class }
  let(:not_created) { "VM not created. Moving on..." } # Vagrant's own message (its en.yml)

  # The boot steps every chain that starts a machine ends with (action_start): nothing when it
  # runs already; else provisioners and synced folders (both act once the rest has returned,
  # i.e. after SSH answers), Vagrant's handling of taken forwarded ports (with our settings), the
  # guest's private networks (once the rest returned), the provider's start, its SSH wait, then
  # Vagrant's communicator.
  def expect_start(item)
    expect(chain([item])).to eq([[builtin::Call, builtin::IsState, :running]])
    expect(chain(branch(item, true)))
      .to eq([[builtin::Message, "The machine is already running."]])
    expect(chain(branch(item, false))).to eq(
      [[builtin::Provision], [builtin::SyncedFolderCleanup], [builtin::SyncedFolders],
       [ours::PrepareForwardedPortCollisionParams], [builtin::HandleForwardedPortCollisions],
       [ours::ConfigureNetworks], [ours::Start], [ours::WaitForSSH], [ours::WaitForReady]]
    )
  end

  # action_halt's steps: the provider's stop when the machine runs, else a message.
  def expect_halt(items)
    expect(chain(items)).to eq([[builtin::ConfigValidate], [builtin::Call, builtin::IsState, :running]])
    expect(chain(branch(items[1], true))).to eq([[ours::Stop]])
    expect(chain(branch(items[1], false))).to eq([[builtin::Message, "The machine is not running."]])
  end

  it "answers every action Vagrant asks a provider for, with a new builder each time" do
    %i[up start halt reload destroy provision ssh ssh_run package suspend resume snapshot_save
       snapshot_restore snapshot_delete].each do |name|
      a = ours.public_send("action_#{name}")
      expect(a).to be_a(Vagrant::Action::Builder)
      expect(a).not_to be(ours.public_send("action_#{name}"))
    end
  end

  describe "up" do
    subject(:up) { ours.action_up }

    it "validates the config, creates the machine when the provider has none, then starts it" do
      expect(chain(up).first(2)).to eq([[builtin::ConfigValidate], [builtin::Call, ours::IsCreated]])
      expect(chain(branch(up.stack[1], false)))
        .to eq([[builtin::HandleBox], [ours::ImportBox], [ours::Create]])
      expect(chain(branch(up.stack[1], true))).to eq([])
      expect(up.stack.size).to eq(3)
      expect_start(up.stack[2])
    end
  end

  describe "start" do
    it "boots a stopped machine and leaves a running one alone" do
      start = ours.action_start
      expect(start.stack.size).to eq(1)
      expect_start(start.stack[0])
    end
  end

  describe "halt" do
    it "validates the config, then stops a running machine only" do
      expect_halt(ours.action_halt.stack)
    end
  end

  describe "reload" do
    subject(:reload) { ours.action_reload }

    it "halts, then starts, a machine that exists" do
      expect(chain(reload)).to eq([[builtin::ConfigValidate], [builtin::Call, ours::IsCreated]])
      created = branch(reload.stack[1], true).stack
      expect(created.size).to eq(3)
      expect_halt(created.first(2))
      expect_start(created[2])
    end

    it "says so when there is no machine" do
      expect(chain(branch(reload.stack[1], false))).to eq([[builtin::Message, not_created]])
    end
  end

  describe "destroy" do
    subject(:destroy) { ours.action_destroy }

    let(:machine) { Struct.new(:name).new(:default) }

    # No ConfigValidate: a broken Vagrantfile must not keep a machine from being destroyed.
    it "asks for confirmation, then runs the provisioners' cleanup and destroys" do
      expect(chain(destroy)).to eq([[builtin::Call, ours::IsCreated]])
      created = branch(destroy.stack[0], true)
      expect(chain(created)).to eq([[builtin::Call, builtin::DestroyConfirm]])
      expect(chain(branch(created.stack[0], true, machine: machine)))
        .to eq([[builtin::ProvisionerCleanup, :before], [ours::Destroy]])
    end

    it "destroys nothing when the confirmation is declined or there is no machine" do
      created = branch(destroy.stack[0], true)
      expect(chain(branch(created.stack[0], false, machine: machine))).to eq(
        [[builtin::Message, "The VM 'default' will not be destroyed, since the confirmation\n" \
                            "was declined."]]
      )
      expect(chain(branch(destroy.stack[0], false))).to eq([[builtin::Message, not_created]])
    end
  end

  describe "provision" do
    it "validates, needs a running machine, then provisions and syncs folders" do
      expect(chain(ours.action_provision)).to eq(
        [[builtin::ConfigValidate], [ours::CheckRunning], [builtin::Provision], [builtin::SyncedFolders]]
      )
    end
  end

  describe "ssh and ssh_run" do
    it "validates, needs a running machine, then hands over to Vagrant's SSH" do
      expect(chain(ours.action_ssh))
        .to eq([[builtin::ConfigValidate], [ours::CheckRunning], [builtin::SSHExec]])
      expect(chain(ours.action_ssh_run))
        .to eq([[builtin::ConfigValidate], [ours::CheckRunning], [builtin::SSHRun]])
    end
  end

  describe "package" do
    subject(:package) { ours.action_package }

    it "halts the machine so that its disks are consistent, then packages it" do
      expect(chain(package)).to eq([[builtin::Call, ours::IsCreated]])
      created = branch(package.stack[0], true).stack
      expect(created.size).to eq(3)
      expect_halt(created.first(2))
      expect(chain(created[2..])).to eq([[ours::Package]])
    end

    it "says so when there is no machine" do
      expect(chain(branch(package.stack[0], false))).to eq([[builtin::Message, not_created]])
    end
  end

  describe "suspend" do
    it "validates, then suspends a running machine only" do
      suspend = ours.action_suspend
      expect(chain(suspend)).to eq([[builtin::ConfigValidate], [builtin::Call, builtin::IsState, :running]])
      expect(chain(branch(suspend.stack[1], true))).to eq([[ours::Suspend]])
      expect(chain(branch(suspend.stack[1], false))).to eq([[builtin::Message, "The machine is not running."]])
    end
  end

  describe "resume" do
    it "resumes a saved machine (machine.start) without the boot's folder and network steps" do
      resume = ours.action_resume
      expect(chain(resume)).to eq([[builtin::ConfigValidate], [builtin::Call, builtin::IsState, :saved]])
      expect(chain(branch(resume.stack[1], true))).to eq(
        [[builtin::Provision], [ours::PrepareForwardedPortCollisionParams],
         [builtin::HandleForwardedPortCollisions], [ours::Start], [ours::WaitForReady]]
      )
      expect(chain(branch(resume.stack[1], false))).to eq([[builtin::Message, "The machine is not suspended."]])
    end
  end

  describe "snapshots" do
    it "saves and deletes snapshots of a machine that exists" do
      { ours.action_snapshot_save => ours::SnapshotSave,
        ours.action_snapshot_delete => ours::SnapshotDelete }.each do |action, step|
        expect(chain(action)).to eq([[builtin::Call, ours::IsCreated]])
        expect(chain(branch(action.stack[0], true))).to eq([[step]])
        expect(chain(branch(action.stack[0], false))).to eq([[builtin::Message, not_created]])
      end
    end

    it "restores, then deletes the snapshot (pop) and starts the machine when asked" do
      restore = ours.action_snapshot_restore
      expect(chain(restore)).to eq([[builtin::Call, ours::IsCreated]])
      expect { branch(restore.stack[0], false) }.to raise_error(Vagrant::Errors::VMNotCreatedError)
      created = branch(restore.stack[0], true)
      expect(chain(created)).to eq(
        [[ours::SnapshotRestore], [builtin::Call, builtin::IsEnvSet, :snapshot_delete],
         [builtin::Call, builtin::IsEnvSet, :snapshot_start]]
      )
      delete = branch(created.stack[1], true)
      expect(chain(delete)).to eq(chain(ours.action_snapshot_delete))
      expect(branch(created.stack[1], false).stack).to be_empty
      start = branch(created.stack[2], true)
      expect(start.stack.size).to eq(1)
      expect_start(start.stack[0])
      expect(branch(created.stack[2], false).stack).to be_empty
    end
  end

  describe "the provider calls" do
    # A machine whose client records the calls; `state` is what the provider reports.
    # `calls` also gets [:resumed!] when the machine's communicator is told its guest resumed.
    def machine_with(calls, state: :running, mode: "shared", networks: [])
      client = Object.new
      client.define_singleton_method(:call) do |method, params|
        calls << [method, params]
        { "state" => "running", "pid" => 42 }
      end
      communicate = Object.new
      communicate.define_singleton_method(:resumed!) { calls << [:resumed!] }
      provider = Struct.new(:client).new(client)
      config = Struct.new(:vm).new(Struct.new(:networks).new(networks))
      Struct.new(:id, :provider, :state, :provider_config, :config, :communicate).new(
        "m-1", provider, Vagrant::MachineState.new(state, state.to_s, ""), Struct.new(:network_mode).new(mode), config,
        communicate
      )
    end

    let(:ui) { Vagrant::UI::Silent.new }

    {
      "Suspend" => [{}, ["machine.suspend", { id: "m-1" }]],
      "SnapshotSave" => [{ snapshot_name: "s1" }, ["machine.snapshot.save", { id: "m-1", name: "s1" }]],
      "SnapshotRestore" => [{ snapshot_name: "s1" }, ["machine.snapshot.restore", { id: "m-1", name: "s1" }]],
      "SnapshotDelete" => [{ snapshot_name: "s1" }, ["machine.snapshot.delete", { id: "m-1", name: "s1" }]],
    }.each do |name, (env, call)|
      it "#{name} makes one call, #{call[0]}, then goes on" do
        calls = []
        reached = false
        step = ours.const_get(name).new(->(_env) { reached = true }, {})
        step.call(env.merge(machine: machine_with(calls), ui: ui))
        expect(calls).to eq([call])
        expect(reached).to be(true)
      end
    end

    it "Start says it resumes a saved machine; machine.start does the resuming, and the " \
       "communicator learns that the guest carries on the boot Vagrant verified" do
      calls = []
      ui = Vagrant::UI::Silent.new
      said = []
      allow(ui).to receive(:info) { |m| said << m }
      ours::Start.new(->(_env) {}, {}).call(machine: machine_with(calls, state: :saved), ui: ui)
      expect(calls).to eq([["machine.start", { id: "m-1" }], [:resumed!]])
      expect(said).to eq(["Resuming the machine from its saved state..."])
    end

    it "Start passes network user's forwarded ports as they are now (auto_correct may have moved one)" do
      calls = []
      nets = [[:forwarded_port, { guest: 22, host: 2222, id: "ssh" }],
              [:forwarded_port, { guest: 80, host: 47_101, auto_correct: true }],
              [:forwarded_port, { guest: 81, disabled: true }], [:private_network, { ip: "192.168.56.10" }]]
      m = machine_with(calls, state: :stopped, mode: "user", networks: nets)
      ours::Start.new(->(_env) {}, {}).call(machine: m, ui: ui)
      expect(calls).to eq([["machine.start", { id: "m-1", forwarded_ports: [{ guest: 80, host: 47_101 }] }]])
    end
  end

  describe "CheckRunning" do
    # A machine whose provider reports the given state.
    def machine_in(state)
      Struct.new(:state).new(Vagrant::MachineState.new(state, state.to_s, ""))
    end

    it "lets a running machine through" do
      reached = false
      ours::CheckRunning.new(->(_env) { reached = true }, {}).call(machine: machine_in(:running))
      expect(reached).to be(true)
    end

    %i[stopped not_created aborted].each do |state|
      it "stops with Vagrant's own error when the machine is #{state}" do
        app = ->(_env) { raise "the chain went on" }
        expect { ours::CheckRunning.new(app, {}).call(machine: machine_in(state)) }
          .to raise_error(Vagrant::Errors::VMNotRunningError)
      end
    end
  end
end
