require "vagrant"

require_relative "networks"

module VagrantPlugins
  module Xhyve
    # `config.vm.provider :xhyve do |x| ... end`. nil means "the box's default" (its
    # metadata.json), which only the provider reads. validate checks shapes so that
    # `vagrant validate` explains a bad value before any machine exists; the provider checks the
    # rest (e.g. a disk path that does not exist) at create time.
    class Config < Vagrant.plugin("2", :config)
      UUID = /\A\h{8}-\h{4}-\h{4}-\h{4}-\h{12}\z/.freeze
      SIZE = /\A\d+\s*[KMGT]?\z/i.freeze # as the provider reads sizes: 512M, 2G
      NETWORK_MODES = %w[user shared].freeze
      # How the machine boots (provider/API.md, machine.create's `firmware`): the box's kernel and
      # initrd loaded directly, or UEFI firmware booting the box's disk.
      FIRMWARES = %w[kexec efi].freeze

      attr_accessor :cpus, :memory, :uuid, :cmdline, :firmware, :disks, :network_mode,
                    :provider_bin, :xhyve_bin

      def initialize
        @cpus = @memory = @uuid = @cmdline = @firmware = @disks = @network_mode = UNSET_VALUE
        @provider_bin = @xhyve_bin = UNSET_VALUE
      end

      def finalize!
        @cpus = nil if @cpus == UNSET_VALUE
        @memory = nil if @memory == UNSET_VALUE
        @uuid = nil if @uuid == UNSET_VALUE
        @cmdline = nil if @cmdline == UNSET_VALUE
        @firmware = nil if @firmware == UNSET_VALUE
        @disks = [] if @disks == UNSET_VALUE
        @network_mode = "user" if @network_mode == UNSET_VALUE
        @provider_bin = ENV.fetch("XHYVE_PROVIDER_BIN", "xhyve-provider") if @provider_bin == UNSET_VALUE
        @xhyve_bin = ENV["XHYVE_BIN"] if @xhyve_bin == UNSET_VALUE
      end

      def validate(machine)
        errors = _detected_errors
        errors.concat(Networks.errors(machine.config.vm.networks)) if machine
        unless @cpus.nil? || (@cpus.is_a?(Integer) && @cpus.between?(1, 255))
          errors << "cpus: #{@cpus.inspect} is not a number of vCPUs from 1 to 255"
        end
        unless @memory.nil? || (@memory.is_a?(Integer) && @memory >= 16) ||
               (@memory.is_a?(String) && @memory.strip.match?(SIZE))
          errors << "memory: #{@memory.inspect} is not a size (an integer of MiB, at least 16, " \
                    "or a string such as \"512M\" or \"2G\")"
        end
        unless @uuid.nil? || (@uuid.is_a?(String) && @uuid.match?(UUID))
          errors << "uuid: #{@uuid.inspect} is not a UUID (e.g. 8c4d1b6a-29a3-4a6e-9f29-6e6f1e8e1f01)"
        end
        unless @cmdline.nil? || (@cmdline.is_a?(String) && !@cmdline.match?(/[\n\0]/))
          errors << "cmdline: #{@cmdline.inspect} is not a one-line kernel command line"
        end
        unless @firmware.nil? || FIRMWARES.include?(@firmware)
          errors << "firmware: #{@firmware.inspect} is not one of kexec (the box's kernel and " \
                    "initrd), efi (UEFI firmware booting the box's disk)"
        end
        unless NETWORK_MODES.include?(@network_mode)
          errors << "network_mode: #{@network_mode.inspect} is not one of #{NETWORK_MODES.join(", ")}"
        end
        errors.concat(disk_errors)
        errors.concat(binary_errors)
        { "xhyve provider" => errors }
      end

      private

      # Each disk is {size: "10G"} (a new empty disk) or {path: "/abs/disk.img"} (used in place).
      def disk_errors
        return ["disks: #{@disks.inspect} is not a list of disks"] unless @disks.is_a?(Array)
        @disks.each_with_index.filter_map do |d, i|
          what = "disks[#{i}]: #{d.inspect}"
          keys = d.is_a?(Hash) ? d.keys.map(&:to_s) : nil
          if keys == ["size"]
            s = d.values.first
            next if (s.is_a?(Integer) && s.positive? && (s % 512).zero?) ||
                    (s.is_a?(String) && s.strip.match?(SIZE))
            "#{what}: size is not a size (\"10G\", or bytes in multiples of 512)"
          elsif keys == ["path"]
            p = d.values.first
            next if p.is_a?(String) && p.start_with?("/") && !p.include?(",")
            "#{what}: path is not an absolute path without commas"
          else
            "#{what} is not {size: \"10G\"} (a new empty disk) or {path: \"/abs/disk.img\"}"
          end
        end
      end

      def binary_errors
        errors = []
        found = if @provider_bin.include?("/")
                  File.executable?(@provider_bin)
                else
                  ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).any? do |d|
                    File.executable?(File.join(d, @provider_bin))
                  end
                end
        errors << "provider_bin: #{@provider_bin} is not an executable (nor on PATH)" unless found
        if @xhyve_bin && !File.executable?(@xhyve_bin)
          errors << "xhyve_bin: #{@xhyve_bin} is not an executable"
        end
        errors
      end
    end
  end
end
