require "vagrant-xhyve/version"
require "vagrant-xhyve/plugin"
