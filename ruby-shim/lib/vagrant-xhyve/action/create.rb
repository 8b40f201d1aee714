require_relative "../networks"

module VagrantPlugins
  module Xhyve
    module Action
      # machine.create from the box ImportBox gave the daemon. The daemon reads the box's
      # metadata.json and copies its disks; the shim only passes the Vagrantfile's settings
      # (private networks are made first, see Networks).
      class Create
        # The box format's default command line (boxes/README.md).
        DEFAULT_CMDLINE = "console=ttyS0".freeze

        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          box = m.box
          c = m.provider_config
          management = { mode: c.network_mode, forwarded_ports: Networks.forwarded_ports(m.config.vm.networks) }
          private = Networks.private(m.config.vm.networks)
          params = {
            box: { name: box.name, version: box.version.to_s },
            name: "#{m.env.root_path.basename}_#{m.name}",
            uuid: c.uuid, cpus: c.cpus, memory: c.memory, cmdline: cmdline(m),
            firmware: c.firmware, disks: c.disks,
          }.compact
          # Private networks: the management NIC first, then one NIC per private_network.
          if private.empty?
            params[:network] = management
          else
            params[:nics] = [management, *private.map(&:last)]
          end
          env[:ui].info("Creating the machine from box '#{box.name}' (v#{box.version})...")
          client = m.provider.client
          Networks.ensure(client, private.map(&:first))
          r = client.call("machine.create", params)
          m.id = r["id"]
          env[:ui].detail("id #{r["id"]}, uuid #{r["uuid"]}: #{r["path"]}")
          @app.call(env)
        end

        private

        # config.vm.hostname as Linux's `hostname=` boot parameter (5.19 and later): it needs no
        # root, sudo or guest plugin in the guest, and holds from the first process on. Like a
        # hostname written to /etc/hostname by other providers, `vagrant package` keeps it.
        def cmdline(machine)
          base = machine.provider_config.cmdline || machine.box.metadata["cmdline"]
          host = machine.config.vm.hostname
          return base unless host
          "#{base || DEFAULT_CMDLINE} hostname=#{host}"
        end
      end
    end
  end
end
