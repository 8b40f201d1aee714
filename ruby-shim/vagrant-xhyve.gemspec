require_relative "lib/vagrant-xhyve/version"

Gem::Specification.new do |s|
  s.name = "vagrant-xhyve"
  s.version = VagrantPlugins::Xhyve::VERSION
  s.summary = "Vagrant provider for xhyve-rs, driven through the xhyve-provider daemon"
  s.description = "A thin Vagrant provider: every action is a JSON-RPC call to xhyve-provider."
  s.authors = ["xhyve-rs"]
  s.license = "Apache-2.0"
  s.required_ruby_version = ">= 2.7"
  # Only Ruby's standard library (socket, json, open3) so that it installs offline.
  s.files = Dir["lib/**/*.rb", "README.md"] # gem build runs in this directory
  s.require_paths = ["lib"]
end
