require "fileutils"

require_relative "../errors"

module VagrantPlugins
  module Xhyve
    module Action
      # `vagrant package [--output FILE] [--vagrantfile FILE]`: the provider writes the stopped
      # machine (kernel, initrd, cmdline, its disks as they are now) as a .box, atomically.
      class Package
        def initialize(app, _env)
          @app = app
        end

        def call(env)
          m = env[:machine]
          out = File.expand_path(env["package.output"] || "package.box", Dir.pwd)
          raise Vagrant::Errors::PackageOutputDirectory if File.directory?(out)
          raise Vagrant::Errors::PackageOutputExists, filename: File.basename(out) if File.exist?(out)
          unless Array(env["package.include"]).empty? && env["package.info"].to_s.empty?
            raise Errors::Error, "vagrant package --include and --info are not supported by " \
                                 "the xhyve provider (the box holds the machine's files and a Vagrantfile)"
          end
          FileUtils.mkdir_p(File.dirname(out))
          params = { id: m.id, output: out }
          params[:vagrantfile] = File.expand_path(env["package.vagrantfile"]) if env["package.vagrantfile"]
          env[:ui].info("Packaging the machine as #{out}...")
          r = m.provider.client.call("machine.package", params)
          env[:ui].detail("#{r["size"]} bytes, #{r["checksum_type"]} #{r["checksum"]}")
          @app.call(env)
        end
      end
    end
  end
end
