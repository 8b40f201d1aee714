module VagrantPlugins
  module Xhyve
    module Action
      # ssh and provision need a running machine; Vagrant's own error says to `vagrant up`.
      class CheckRunning
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          raise Vagrant::Errors::VMNotRunningError if env[:machine].state.id != :running
          @app.call(env)
        end
      end
    end
  end
end
