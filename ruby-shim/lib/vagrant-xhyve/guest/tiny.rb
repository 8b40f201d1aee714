module VagrantPlugins
  module Xhyve
    module Guest
      # The tiny box's guest (`config.vm.guest = :xhyve_tiny`, which its Vagrantfile sets): Linux
      # in an initramfs made anew at every boot. Never detected: only named.
      class Tiny < Vagrant.plugin("2", :guest)
        def detect?(_machine)
          false
        end

        # Vagrant keeps synced folders in /etc/fstab after every `up` (with nil folders it only
        # cleans its entries, which costs a command, seconds on this host). This root has no
        # file system to keep them in: whatever is written to /etc is gone at the next boot.
        def self.persist_mount_shared_folder(_machine, _folders); end
      end
    end
  end
end
