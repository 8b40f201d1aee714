module VagrantPlugins
  module Xhyve
    VERSION = "0.1.0".freeze
  end
end
