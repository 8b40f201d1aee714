require "tmpdir"
require "vagrant/util/subprocess"

require_relative "../errors"

module VagrantPlugins
  module Xhyve
    module Action
      # HandleBox keeps the box unpacked in Vagrant's store; the daemon boots machines from its
      # own store. So the first machine of a box version hands that directory to box.add as a tar
      # (the daemon checks it as it checks any box). bsdtar is what Vagrant itself unpacks boxes
      # with; GNU format and no sparse entries are what the daemon's unpacker reads (it makes the
      # runs of zeros holes again).
      class ImportBox
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          box = m.box
          raise Vagrant::Errors::BoxNotFound, name: m.config.vm.box.to_s if box.nil?
          client = m.provider.client
          version = box.version.to_s
          have = client.call("box.list").any? { |b| b["name"] == box.name && b["version"] == version }
          unless have
            env[:ui].info("Handing box '#{box.name}' (v#{version}) to xhyve-provider...")
            Dir.mktmpdir("xhyve-box", m.env.tmp_path) do |dir|
              tar = File.join(dir, "box.tar")
              pack(box.directory.to_s, tar)
              add(client, tar, box.name, version)
            end
          end
          @app.call(env)
        end

        private

        # Machines brought up in parallel may both hand the box over: the one that comes second
        # finds it installed, which is what it wanted.
        def add(client, tar, name, version)
          client.call("box.add", source: tar, name: name, version: version)
        rescue Errors::RpcError => e
          raise unless e.code == Errors::RpcError::ALREADY_EXISTS
        end

        def pack(dir, tar)
          r = Vagrant::Util::Subprocess.execute("bsdtar", "--format", "gnutar", "--no-read-sparse",
                                                "-cf", tar, "-C", dir, *Dir.children(dir).sort)
          return if r.exit_code.zero?
          raise Errors::Error, "bsdtar could not pack #{dir}: #{r.stderr.strip}"
        end
      end
    end
  end
end
