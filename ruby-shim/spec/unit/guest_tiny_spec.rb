require "vagrant-xhyve/guest/tiny"

RSpec.describe VagrantPlugins::Xhyve::Guest::Tiny do
  let(:manager) { Vagrant.plugin("2").manager }

  it "is a Linux guest that is never detected, only named (config.vm.guest = :xhyve_tiny)" do
    klass, parent = manager.guests[:xhyve_tiny]
    expect(klass).to be(described_class)
    expect(parent).to eq(:linux)
    expect(described_class.new.detect?(double("machine"))).to be(false)
  end

  it "keeps no synced folders in /etc/fstab, and runs no guest command for it" do
    cap = manager.guest_capabilities[:xhyve_tiny][:persist_mount_shared_folder]
    expect(cap).to be(described_class)
    machine = double("machine") # any call on it (machine.communicate) fails the example
    expect(cap.persist_mount_shared_folder(machine, nil)).to be_nil
    expect(cap.persist_mount_shared_folder(machine, { "/vagrant" => {} })).to be_nil
  end

  it "is what the tiny box's Vagrantfile names" do
    vagrantfile = File.read(File.expand_path("../../../boxes/tiny/Vagrantfile", __dir__))
    expect(vagrantfile).to match(/^\s*config\.vm\.guest = :xhyve_tiny$/)
  end
end
