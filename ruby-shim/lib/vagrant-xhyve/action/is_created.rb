module VagrantPlugins
  module Xhyve
    module Action
      # env[:result]: the provider has a record of the machine, in any state, including a
      # creation that was cut short (which only destroy removes). Vagrant's :not_created state
      # cannot tell that one apart from no machine at all.
      class IsCreated
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          env[:result] = !env[:machine].provider.machine_state.nil?
          @app.call(env)
        end
      end
    end
  end
end
