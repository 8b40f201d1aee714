module VagrantPlugins
  module Xhyve
    module Action
      # Vagrant's WaitForCommunicator, without its rounding: that one looks once a second whether
      # the communicator is ready, so every `up` and `resume` waited up to a second (half a second
      # on average) after the guest was ready. This one wakes as soon as it is, and still checks
      # the machine's state once a second: a machine that stops running ends the wait with
      # Vagrant's own error.
      class WaitForReady
        POLL = 0.05
        STATE_EVERY = 1.0

        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          ready = Thread.new { m.communicate.wait_for_ready(m.config.vm.boot_timeout) }
          env[:ui].output(I18n.t("vagrant.boot_waiting"))
          next_check = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          until ready.join(POLL)
            return if env[:interrupted]
            next if Process.clock_gettime(Process::CLOCK_MONOTONIC) < next_check

            state = m.state.id
            raise Vagrant::Errors::VMBootBadState, valid: "running", invalid: state if state != :running
            next_check += STATE_EVERY
          end
          raise Vagrant::Errors::VMBootTimeout unless ready.value

          env[:ui].output(I18n.t("vagrant.boot_completed"))
          @app.call(env)
        ensure
          ready&.kill
        end
      end
    end
  end
end
