require_relative "../networks"

module VagrantPlugins
  module Xhyve
    module Action
      # The private networks in the guest, once it answers (after the rest of the chain, which
      # boots it): by Vagrant's own guest capability configure_networks, as the VirtualBox
      # provider's Network action does, when the guest has it (Debian's does). A guest without it
      # (the tiny box's :linux) is left to its DHCP client: the provider's DHCP gives each NIC its
      # static ip as a fixed lease (type "dhcp": an address of the range), so it gets the same
      # addresses without guest help.
      class ConfigureNetworks
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          @app.call(env)
          m = env[:machine]
          networks = Networks.guest_networks(m.config.vm.networks)
          return if networks.empty?

          if m.guest.capability?(:configure_networks)
            env[:ui].info(I18n.t("vagrant.actions.vm.network.configuring"))
            m.guest.capability(:configure_networks, networks)
          else
            env[:ui].detail("The guest (#{m.guest.name}) has no configure_networks capability: its " \
                            "private network addresses come from the provider's DHCP (fixed leases).")
          end
        end
      end
    end
  end
end
