# Unit specs of vagrant-xhyve, as vagrant-libvirt keeps them (spec/unit/): the plugin's classes on
# Debian's real Vagrant library (vagrant 2.3.4, found by rubygems-integration), without a daemon,
# a guest or network. `cd ruby-shim && rspec` (tests/run does). What needs xhyve-provider and a
# guest is in tests/vagrant/.
require "vagrant"

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "vagrant-xhyve"
require "vagrant-xhyve/config"
require "vagrant-xhyve/provider"

# The middleware chains of Vagrant::Action::Builder, as data the specs compare.
module ChainHelpers
  # The middlewares of a builder (or of some items of its stack) in order, each as
  # [class, *parameters]; a builder used inside another (b.use action_halt) is merged into it, as
  # Vagrant runs it.
  def chain(builder_or_items)
    items = builder_or_items.is_a?(Vagrant::Action::Builder) ? builder_or_items.stack : builder_or_items
    items.map { |item| [item.middleware, *item.arguments.parameters] }
  end

  # The builder a Call item's block fills when its condition middleware has set env[:result]
  # to `result` (Vagrant::Action::Builtin::Call runs it so at run time).
  def branch(item, result, env = {})
    expect(item.middleware).to be(Vagrant::Action::Builtin::Call)
    Vagrant::Action::Builder.new.tap { |b| item.arguments.block.call(env.merge(result: result), b) }
  end
end

RSpec.configure do |c|
  c.include ChainHelpers
  c.disable_monkey_patching!
  c.warnings = false # Vagrant's own library is not warning-free; tests/lint runs ruby -wc on ours
  c.order = :random
end
