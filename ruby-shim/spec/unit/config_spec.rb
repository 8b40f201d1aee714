require "tmpdir"

RSpec.describe VagrantPlugins::Xhyve::Config do
  subject(:config) { described_class.new }

  # validate's messages for a config with the given settings (and an existing provider_bin unless
  # the spec sets one), after finalize! as Vagrant calls it.
  def errors_with(**settings)
    settings = { provider_bin: RbConfig.ruby }.merge(settings)
    settings.each { |k, v| config.public_send("#{k}=", v) }
    config.finalize!
    result = config.validate(nil)
    expect(result.keys).to eq(["xhyve provider"])
    result["xhyve provider"]
  end

  around do |example|
    saved = ENV.to_h.slice("XHYVE_PROVIDER_BIN", "XHYVE_BIN", "PATH")
    ENV.delete("XHYVE_PROVIDER_BIN")
    ENV.delete("XHYVE_BIN")
    example.run
  ensure
    %w[XHYVE_PROVIDER_BIN XHYVE_BIN PATH].each { |k| ENV[k] = saved[k] }
  end

  describe "#finalize!" do
    it "leaves the box's defaults to the box (nil) and fills in the provider's own" do
      config.finalize!
      expect(config.cpus).to be_nil
      expect(config.memory).to be_nil
      expect(config.uuid).to be_nil
      expect(config.cmdline).to be_nil
      expect(config.firmware).to be_nil
      expect(config.disks).to eq([])
      expect(config.network_mode).to eq("user")
      expect(config.provider_bin).to eq("xhyve-provider")
      expect(config.xhyve_bin).to be_nil
    end

    it "takes provider_bin and xhyve_bin from XHYVE_PROVIDER_BIN and XHYVE_BIN when unset" do
      ENV["XHYVE_PROVIDER_BIN"] = "/opt/xhyve/xhyve-provider"
      ENV["XHYVE_BIN"] = "/opt/xhyve/xhyve"
      config.finalize!
      expect(config.provider_bin).to eq("/opt/xhyve/xhyve-provider")
      expect(config.xhyve_bin).to eq("/opt/xhyve/xhyve")
    end

    it "keeps every value the Vagrantfile set, over the environment" do
      ENV["XHYVE_PROVIDER_BIN"] = "/from/env"
      config.cpus = 2
      config.memory = "1G"
      config.uuid = "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01"
      config.cmdline = "console=ttyS0 quiet"
      config.firmware = "efi"
      config.disks = [{ size: "10G" }]
      config.network_mode = "shared"
      config.provider_bin = "/from/vagrantfile"
      config.xhyve_bin = "/from/vagrantfile/xhyve"
      config.finalize!
      expect([config.cpus, config.memory, config.uuid, config.cmdline, config.firmware, config.disks,
              config.network_mode, config.provider_bin, config.xhyve_bin])
        .to eq([2, "1G", "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01", "console=ttyS0 quiet", "efi",
                [{ size: "10G" }], "shared", "/from/vagrantfile", "/from/vagrantfile/xhyve"])
    end

    it "merges as Vagrant merges Vagrantfiles: a later one overrides only what it sets" do
      box = described_class.new.tap { |c| c.cpus = 1; c.memory = "256M"; c.firmware = "efi" }
      project = described_class.new.tap { |c| c.cpus = 4 }
      merged = box.merge(project)
      merged.finalize!
      expect([merged.cpus, merged.memory, merged.firmware, merged.network_mode]).to eq([4, "256M", "efi", "user"])
    end
  end

  describe "#validate" do
    it "accepts the defaults" do
      expect(errors_with).to eq([])
    end

    it "accepts every documented form of each value" do
      expect(errors_with(cpus: 255, memory: 16, uuid: "8C4D1B6A-29a3-4a6e-9f29-6e6f1e8e1f01",
                         cmdline: "console=ttyS0 root=/dev/vda", network_mode: "shared",
                         disks: [{ size: "10G" }, { "size" => 1 << 30 }, { path: "/var/disk.img" }],
                         xhyve_bin: RbConfig.ruby)).to eq([])
      %w[512M 2G 2g 1024 64K 1T].each { |m| expect(errors_with(memory: " #{m} ")).to eq([]), m }
      %w[kexec efi].each { |f| expect(errors_with(firmware: f)).to eq([]), f }
    end

    [0, 256, "2", 1.5].each do |value|
      it "explains cpus = #{value.inspect}" do
        expect(errors_with(cpus: value))
          .to eq(["cpus: #{value.inspect} is not a number of vCPUs from 1 to 255"])
      end
    end

    [15, 0, -512, 1.5, "lots", "512MB", "2 G B", ""].each do |value|
      it "explains memory = #{value.inspect}" do
        expect(errors_with(memory: value)).to eq(
          ["memory: #{value.inspect} is not a size (an integer of MiB, at least 16, or a string " \
           "such as \"512M\" or \"2G\")"]
        )
      end
    end

    ["nope", "8c4d1b6a29a34a6e9f296e6f1e8e1f01", "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01\n",
     "8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f0g", 42].each do |value|
      it "explains uuid = #{value.inspect}" do
        expect(errors_with(uuid: value)).to eq(
          ["uuid: #{value.inspect} is not a UUID (e.g. 8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01)"]
        )
      end
    end

    ["console=ttyS0\nquiet", "a\0b", 42, ["console=ttyS0"]].each do |value|
      it "explains cmdline = #{value.inspect}" do
        expect(errors_with(cmdline: value))
          .to eq(["cmdline: #{value.inspect} is not a one-line kernel command line"])
      end
    end

    ["bios", "bootrom", "EFI", :efi, ""].each do |value|
      it "explains firmware = #{value.inspect}" do
        expect(errors_with(firmware: value)).to eq(
          ["firmware: #{value.inspect} is not one of kexec (the box's kernel and initrd), " \
           "efi (UEFI firmware booting the box's disk)"]
        )
      end
    end

    ["bridged", "none", :user, nil].each do |value|
      it "explains network_mode = #{value.inspect}" do
        expect(errors_with(network_mode: value))
          .to eq(["network_mode: #{value.inspect} is not one of user, shared"])
      end
    end

    describe "disks" do
      it "explains a value that is not a list" do
        expect(errors_with(disks: { size: "10G" }))
          .to eq(["disks: {:size=>\"10G\"} is not a list of disks"])
      end

      {
        { size: 1000 } => "size is not a size (\"10G\", or bytes in multiples of 512)",
        { size: 0 } => "size is not a size (\"10G\", or bytes in multiples of 512)",
        { size: "ten gigs" } => "size is not a size (\"10G\", or bytes in multiples of 512)",
        { path: "disk.img" } => "path is not an absolute path without commas",
        { path: "/a,b.img" } => "path is not an absolute path without commas",
        { path: :x } => "path is not an absolute path without commas",
      }.each do |disk, why|
        it "explains #{disk.inspect}" do
          expect(errors_with(disks: [{ size: "1G" }, disk]))
            .to eq(["disks[1]: #{disk.inspect}: #{why}"])
        end
      end

      [{ size: "1G", path: "/d.img" }, {}, "/d.img", { file: "/d.img" }].each do |disk|
        it "explains #{disk.inspect}, which is neither form" do
          expect(errors_with(disks: [disk])).to eq(
            ["disks[0]: #{disk.inspect} is not {size: \"10G\"} (a new empty disk) or " \
             "{path: \"/abs/disk.img\"}"]
          )
        end
      end
    end

    describe "provider_bin and xhyve_bin" do
      it "finds a provider_bin without a slash on PATH" do
        Dir.mktmpdir do |dir|
          File.write(File.join(dir, "xhyve-provider"), "#!/bin/sh\n")
          File.chmod(0o755, File.join(dir, "xhyve-provider"))
          ENV["PATH"] = "/nonexistent:#{dir}"
          expect(errors_with(provider_bin: "xhyve-provider")).to eq([])
          ENV["PATH"] = "/nonexistent"
          expect(errors_with(provider_bin: "xhyve-provider"))
            .to eq(["provider_bin: xhyve-provider is not an executable (nor on PATH)"])
        end
      end

      it "explains a path that is missing or not executable" do
        Dir.mktmpdir do |dir|
          plain = File.join(dir, "plain")
          File.write(plain, "")
          expect(errors_with(provider_bin: plain, xhyve_bin: File.join(dir, "missing"))).to eq(
            ["provider_bin: #{plain} is not an executable (nor on PATH)",
             "xhyve_bin: #{File.join(dir, "missing")} is not an executable"]
          )
        end
      end
    end

    it "lists every bad value at once, and settings that do not exist" do
      config.cpus = 0
      config.network_mode = "bridged"
      config.memroy = "1G" # a typo: Vagrant's base class records it
      expect(errors_with).to eq(
        ["The following settings shouldn't exist: memroy",
         "cpus: 0 is not a number of vCPUs from 1 to 255",
         "network_mode: \"bridged\" is not one of user, shared"]
      )
    end
  end
end
