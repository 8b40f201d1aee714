RSpec.describe VagrantPlugins::Xhyve::Provider do
  # What the provider reads of a machine before it has asked xhyve-provider anything.
  let(:machine) { Struct.new(:id).new(nil) }

  subject(:provider) { described_class.new(machine) }

  describe "the plugin" do
    let(:manager) { Vagrant.plugin("2").manager }

    it "registers provider :xhyve for boxes of format xhyve, machines brought up in parallel" do
      klass, options = manager.providers[:xhyve]
      expect(klass).to be(described_class)
      expect(options).to include(box_format: "xhyve", parallel: true)
    end

    it "registers its config as config.vm.provider :xhyve" do
      expect(manager.provider_configs[:xhyve]).to be(VagrantPlugins::Xhyve::Config)
    end
  end

  describe "#action" do
    %i[up start halt reload destroy provision ssh ssh_run package suspend resume snapshot_save
       snapshot_restore snapshot_delete].each do |name|
      it "answers #{name} with Action.action_#{name}'s chain" do
        expect(provider.action(name).stack.map(&:middleware))
          .to eq(VagrantPlugins::Xhyve::Action.public_send("action_#{name}").stack.map(&:middleware))
      end
    end

    # Vagrant then says the provider does not support the command.
    it "answers nil for what xhyve does not support" do
      expect(provider.action(:box_update_something)).to be_nil
    end
  end

  describe "the snapshot_list capability" do
    let(:manager) { Vagrant.plugin("2").manager }
    let(:cap) { manager.provider_capabilities[:xhyve][:snapshot_list] }

    it "is registered for provider :xhyve, so that `vagrant snapshot` works" do
      expect(cap).to be(VagrantPlugins::Xhyve::Cap::SnapshotList)
    end

    it "lists the snapshots' names through machine.snapshot.list, none before there is a machine" do
      client = double("client")
      expect(client).to receive(:call).with("machine.snapshot.list", id: "m-1")
                                      .and_return([{ "name" => "a", "vm_state" => true }, { "name" => "push_1_2" }])
      m = Struct.new(:id, :provider).new("m-1", double("provider", client: client))
      expect(cap.snapshot_list(m)).to eq(%w[a push_1_2])
      expect(cap.snapshot_list(Struct.new(:id).new(nil))).to eq([])
    end
  end

  context "with a machine the daemon knows" do
    let(:machine) { Struct.new(:id).new("m-1") }

    it "shows a suspended machine as saved, and says how to resume it" do
      allow(provider).to receive(:machine_state).and_return("id" => "m-1", "name" => "n", "state" => "saved")
      state = provider.state
      expect([state.id, state.short_description]).to eq([:saved, "saved"])
      expect(state.long_description).to include("`vagrant up` or `vagrant resume` resumes it")
    end
  end

  context "before the machine has an id" do
    it "is not_created, without asking the daemon" do
      state = provider.state
      expect([state.id, state.short_description]).to eq([:not_created, "not_created"])
      expect(state.long_description).to eq("The machine does not exist. `vagrant up` creates and starts it.")
    end

    it "has no SSH info (Vagrant then says SSH is not ready)" do
      expect(provider.ssh_info).to be_nil
    end

    it "shows as plain xhyve" do
      expect(provider.to_s).to eq("xhyve")
      machine.id = "m-1234"
      expect(provider.to_s).to eq("xhyve (m-1234)")
    end
  end
end
