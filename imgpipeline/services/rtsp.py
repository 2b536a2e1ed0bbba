"""A local RTSP camera for tests and trials: Debian's RTSP::Server relaying a looped video.

ffmpeg publishes the video (ANNOUNCE/RECORD) on the server's source port; clients read it at
`rtsp://127.0.0.1:<client port>/<path>`. The perl launcher starts ffmpeg itself, so the server
and its publisher are one process group: stopping (or killing) the camera ends both. The server
relays RTP over UDP only, so clients must ask for UDP (`rtsp_transport;udp`). Not part of
`imgpipeline services up`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from imgpipeline.services.base import LocalService

INSTALL_HINT = "apt-get install ffmpeg librtsp-server-perl (Debian, Ubuntu)"

# Arguments: client port, source port, first RTP port, then the publisher's command line.
LAUNCHER = r"""
use strict;
use warnings;
use AnyEvent;
use RTSP::Server;

my ($client_port, $source_port, $rtp_port, @publisher) = @ARGV;
my $server = RTSP::Server->new(
    client_listen_address => '127.0.0.1', client_listen_port => $client_port,
    source_listen_address => '127.0.0.1', source_listen_port => $source_port,
    rtp_start_port => $rtp_port, log_level => 2,
);
$server->listen;
$| = 1;
my $pid = fork // die "fork: $!\n";
if (!$pid) { exec @publisher or die "cannot run $publisher[0]: $!\n" }
# A publisher that ends leaves nothing to serve: end with it.
my $publisher = AnyEvent->child(pid => $pid, cb => sub {
    print "publisher exited with status ", $_[1] >> 8, "\n";
    exit 1;
});
AnyEvent->condvar->recv;
"""

RTP_PORTS = 64  # UDP ports the server takes from its first RTP port: two per stream and client


def rtsp_camera_missing() -> str | None:
    """Why a local RTSP camera cannot run here (with how to install it), or None."""
    if not shutil.which("ffmpeg"):
        return f"ffmpeg is not installed: {INSTALL_HINT}"
    if not shutil.which("perl") or subprocess.run(
            ["perl", "-MRTSP::Server", "-e1"], capture_output=True).returncode != 0:
        return f"the perl module RTSP::Server is not installed: {INSTALL_HINT}"
    return None


def free_udp_ports(count: int) -> int:
    """The first of `count` consecutive UDP ports on 127.0.0.1 that nothing holds right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1] & ~1
        if first + count > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise OSError(f"no {count} free consecutive UDP ports on 127.0.0.1")


class RtspCamera(LocalService):
    """A video looped forever as a live RTSP stream on loopback."""

    name = "rtsp"
    port_names = ("client", "source")
    start_timeout_s = 20.0

    def __init__(self, workdir: Path, video: Path, path: str = "camera"):
        super().__init__(workdir)
        self.video = Path(video)
        self.path = path
        self.rtp_port = 0

    def prepare(self, ports: dict[str, int]) -> None:
        self.rtp_port = free_udp_ports(RTP_PORTS)

    def argv(self, ports: dict[str, int]) -> list[str]:
        publisher = ["ffmpeg", "-hide_banner", "-loglevel", "warning", "-re", "-stream_loop", "-1",
                     "-i", str(self.video), "-an", "-c:v", "copy", "-f", "rtsp",
                     f"rtsp://127.0.0.1:{ports['source']}/{self.path}"]
        return ["perl", "-e", LAUNCHER, str(ports["client"]), str(ports["source"]),
                str(self.rtp_port), *publisher]

    def address(self, ports: dict[str, int]) -> str:
        return f"rtsp://127.0.0.1:{ports['client']}/{self.path}"

    @property
    def url(self) -> str:
        return self.address(self.ports)

    def ready(self, ports: dict[str, int]) -> bool:
        """True once the stream is published: the server describes it to clients."""
        if not ports:
            return False
        request = f"DESCRIBE {self.address(ports)} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode()
        try:
            with socket.create_connection(("127.0.0.1", ports["client"]), timeout=1) as sock:
                sock.sendall(request)
                return sock.recv(64).startswith(b"RTSP/1.0 200")
        except OSError:
            return False
