require "vagrant"

module VagrantPlugins
  module Xhyve
    class Plugin < Vagrant.plugin("2")
      name "xhyve"
      description "Runs machines on xhyve-rs through the xhyve-provider daemon."

      config(:xhyve, :provider) do
        require_relative "config"
        Config
      end

      # parallel: every call opens its own connection and the daemon serialises calls per machine.
      provider(:xhyve, box_format: "xhyve", parallel: true) do
        require_relative "provider"
        Provider
      end

      # SSH that keeps its connection on slow guests (communicator.rb).
      communicator(:xhyve_ssh) do
        require_relative "communicator"
        Communicator
      end

      # The tiny box's guest (guest/tiny.rb): Linux whose root is rebuilt at every boot.
      guest(:xhyve_tiny, :linux) do
        require_relative "guest/tiny"
        Guest::Tiny
      end

      guest_capability(:xhyve_tiny, :persist_mount_shared_folder) do
        require_relative "guest/tiny"
        Guest::Tiny
      end

      # `vagrant port`.
      provider_capability(:xhyve, :forwarded_ports) do
        require_relative "cap/forwarded_ports"
        Cap::ForwardedPorts
      end

      # `vagrant snapshot ...`.
      provider_capability(:xhyve, :snapshot_list) do
        require_relative "cap/snapshot_list"
        Cap::SnapshotList
      end
    end
  end
end
