require "json"
require "open3"
require "socket"

require_relative "errors"

module VagrantPlugins
  module Xhyve
    # A JSON-RPC 2.0 client of `xhyve-provider serve`: one line of JSON each way on the unix
    # socket `$XHYVE_HOME/provider.sock` (provider/API.md). One connection per call, so calls
    # from parallel machines never interleave.
    class Client
      # provider_bin: the xhyve-provider binary that starts the daemon when none runs;
      # xhyve_bin: the VMM that daemon runs (its XHYVE_BIN), nil for xhyve next to provider_bin.
      def initialize(provider_bin:, xhyve_bin: nil, ui: nil)
        @provider_bin = provider_bin
        @xhyve_bin = xhyve_bin
        @ui = ui
        @home = ENV["XHYVE_HOME"].to_s.empty? ? File.join(Dir.home, ".xhyve") : ENV["XHYVE_HOME"]
      end

      # Sends one request and returns its result; `progress` notifications that arrive before
      # the response are shown on the UI. Raises Errors::RpcError for an error response.
      def call(method, params = {})
        sock = connect
        begin
          sock.write(JSON.generate({ jsonrpc: "2.0", id: 1, method: method, params: params }) + "\n")
          loop do
            line = sock.gets
            raise Errors::DaemonError, "xhyve-provider closed the connection during #{method} " \
              "(its log: #{File.join(@home, "provider.log")})" if line.nil?
            msg = JSON.parse(line)
            next notify(msg) unless msg.key?("id")
            raise Errors::RpcError.new(method, msg["error"]) if msg["error"]
            return msg["result"]
          end
        ensure
          sock.close
        end
      end

      private

      def socket_path
        File.join(@home, "provider.sock")
      end

      def connect
        UNIXSocket.new(socket_path)
      rescue Errno::ENOENT, Errno::ECONNREFUSED
        start_daemon
        UNIXSocket.new(socket_path)
      end

      # `xhyve-provider call` starts the daemon detached (own session, log in provider.log) and
      # waits until it listens: the provider's own way, not a second copy of it here.
      def start_daemon
        env = @xhyve_bin ? { "XHYVE_BIN" => @xhyve_bin } : {}
        _, err, status = Open3.capture3(env, @provider_bin, "call", "--home", @home,
                                        "provider.info", stdin_data: "")
        return if status.success?
        raise Errors::DaemonError, "could not start xhyve-provider serve (#{@provider_bin}): #{err.strip}"
      rescue Errno::ENOENT, Errno::EACCES => e
        raise Errors::DaemonError, "cannot run #{@provider_bin}: #{e.message} (set " \
          "config.vm.provider :xhyve's provider_bin, or put xhyve-provider on PATH)"
      end

      # `progress`: {phase, done, total}. A meter on a terminal; the end of each phase is one
      # line everywhere (Vagrant's non-interactive UI drops report_progress).
      def notify(msg)
        return unless @ui && msg["method"] == "progress"
        p = msg["params"]
        @ui.clear_line if $stdout.tty?
        if p["total"] && p["done"] >= p["total"]
          @ui.detail("#{p["phase"]}: #{mib(p["done"])} done")
        elsif $stdout.tty?
          @ui.report_progress(p["done"], p["total"] || 0, false)
        end
      end

      def mib(bytes)
        format("%.1f MiB", bytes / 1048576.0)
      end
    end
  end
end
