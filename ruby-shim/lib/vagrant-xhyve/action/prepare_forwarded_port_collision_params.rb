module VagrantPlugins
  module Xhyve
    module Action
      # The settings of Vagrant's HandleForwardedPortCollisions (which follows it, as in the
      # VirtualBox and libvirt providers): a taken host port of a forwarded_port with
      # `auto_correct: true` moves to a free one of config.vm.usable_port_range (the moved port
      # reaches the provider with machine.start, see Start); without auto_correct it is Vagrant's
      # ForwardPortCollision error, before the machine starts. Vagrant's own SSH forward (id
      # "ssh") is not ours: the provider picks the SSH port itself, so its port counts as free,
      # and so does every port outside network user, where nothing is forwarded.
      class PrepareForwardedPortCollisionParams
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          env[:port_collision_repair] = true
          env[:port_collision_port_check] = port_check(m)
          @app.call(env)
        end

        private

        # Vagrant's check, but for the SSH forward's host port (the repair never picks it: it
        # takes none of the Vagrantfile's host ports) and outside network user.
        def port_check(machine)
          forwarding = machine.provider_config.network_mode == "user"
          nets = machine.config.vm.networks
          ours = Networks.forwarded_ports(nets).map { |f| f[:host] }
          ssh = nets.filter_map { |type, o| o[:host] if type == :forwarded_port && o[:id] == "ssh" } - ours
          lambda do |host_ip, host_port|
            next false if !forwarding || ssh.include?(host_port)

            Vagrant::Action::Builtin::HandleForwardedPortCollisions.port_check(machine, host_ip, host_port)
          end
        end
      end
    end
  end
end
