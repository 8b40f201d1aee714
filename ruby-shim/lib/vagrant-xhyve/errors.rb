require "vagrant"

module VagrantPlugins
  module Xhyve
    module Errors
      # Vagrant prints a VagrantError's message without a backtrace. The provider's messages are
      # already written for people, so they are shown as they come instead of through I18n keys.
      class Error < Vagrant::Errors::VagrantError
        def initialize(message)
          @text = message
          super()
        end

        def error_message
          @text
        end
      end

      # xhyve-provider could not be reached or started.
      class DaemonError < Error; end

      # A JSON-RPC error object from the daemon (codes: provider/API.md).
      class RpcError < Error
        NOT_FOUND = -32001
        IN_USE = -32002
        ALREADY_EXISTS = -32003
        WRONG_STATE = -32009

        attr_reader :code, :data

        def initialize(method, error)
          @code = error["code"]
          @data = error["data"]
          super("xhyve-provider #{method}: #{error["message"]}")
        end
      end
    end
  end
end
