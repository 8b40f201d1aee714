module VagrantPlugins
  module Xhyve
    module Cap
      # What Vagrant's snapshot commands ask for first; the actions are Action.action_snapshot_*.
      module SnapshotList
        # The names of the machine's snapshots, oldest first.
        def self.snapshot_list(machine)
          return [] if machine.id.nil?
          machine.provider.client.call("machine.snapshot.list", id: machine.id).map { |s| s["name"] }
        end
      end
    end
  end
end
