// Package testserver replaces k8s.io/apiserver's testserver package (the embedded etcd that
// its storage tests start for each RunEtcd) in the datastore's build of those tests
// (datastore/testing/refs.py copies the apiserver module into the build cache and puts this
// file in place of pkg/storage/etcd3/testserver/test_server.go). Same API, but each RunEtcd
// starts a fresh external server process chosen by the environment:
//
//	STORAGE_BACKEND      datastore | etcd | kine
//	STORAGE_BACKEND_BIN  the server executable (the datastore entry point, etcd 3.6, kine)
//
// The tests configure the server through an *embed.Config; the fields they set
// (WatchProgressNotifyInterval, QuotaBackendBytes, MaxRequestBytes, MaxTxnOps) become
// command-line flags, and a field this server cannot honour fails the test instead of
// being dropped silently.
package testserver

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

const startTimeout = 60 * time.Second // generous: a loaded 2-core machine

// freePorts picks loopback ports nobody listens on (the server binds them soon after).
func freePorts(t testing.TB, n int) []int {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testserver: no free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// NewTestConfig returns etcd's default configuration with free loopback ports, a data
// directory removed when the test ends, and fsync off (the member is thrown away).
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()
	cfg.UnsafeNoFsync = true
	p := freePorts(t, 2)
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p[0]))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p[1]))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Dir = t.TempDir()
	return cfg
}

// Held from picking ports to serving on them when RunEtcd picks the ports itself.
var autoPortLock sync.Mutex

// RunEtcd starts a server for cfg (NewTestConfig(t) if nil) and returns a client of it,
// wrapped in the tests' request recorders. The server is killed when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	if cfg == nil {
		autoPortLock.Lock()
		defer autoPortLock.Unlock()
		cfg = NewTestConfig(t)
	}
	if !cfg.ClientTLSInfo.Empty() || !cfg.PeerTLSInfo.Empty() {
		t.Fatal("testserver: TLS is not supported by the external test server")
	}
	backend, bin := os.Getenv("STORAGE_BACKEND"), os.Getenv("STORAGE_BACKEND_BIN")
	if bin == "" {
		t.Fatal("testserver: set STORAGE_BACKEND_BIN to the server executable")
	}
	args, err := serverArgs(backend, cfg)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(cfg.Dir, backend+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Own process group (killed whole), and killed with us if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testserver: starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("testserver: %s log (last lines):\n%s", backend, tail(logPath, 40))
		}
	})

	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{cfg.ListenClientUrls[0].String()},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() }) // runs before the kill above
	waitReady(t, client, exited, logPath)

	recorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, recorder)
	client.Kubernetes = recorder
	return client
}

// serverArgs turns the embed.Config the test prepared into the backend's flags.
func serverArgs(backend string, cfg *embed.Config) ([]string, error) {
	clientURL := cfg.ListenClientUrls[0]
	notify := cfg.WatchProgressNotifyInterval.String()
	switch backend {
	case "datastore", "etcd":
		// The datastore takes etcd's flag names; etcd 3.6's spelling of the progress flag.
		peer := cfg.ListenPeerUrls[0].String()
		args := []string{
			"--name", cfg.Name, "--data-dir", filepath.Join(cfg.Dir, "data"),
			"--listen-client-urls", clientURL.String(), "--advertise-client-urls", clientURL.String(),
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", cfg.InitialCluster,
			"--watch-progress-notify-interval", notify,
			"--max-request-bytes", strconv.FormatUint(uint64(cfg.MaxRequestBytes), 10),
			"--max-txn-ops", strconv.FormatUint(uint64(cfg.MaxTxnOps), 10),
			"--log-level", "warn",
		}
		if cfg.QuotaBackendBytes > 0 {
			args = append(args, "--quota-backend-bytes", strconv.FormatInt(cfg.QuotaBackendBytes, 10))
		}
		if cfg.UnsafeNoFsync {
			args = append(args, "--unsafe-no-fsync")
		}
		return args, nil
	case "kine":
		// kine keeps no quota and has no request limits; its SQLite file lives in cfg.Dir.
		// No metrics listener: it would take :8080 on every interface, once per server.
		return []string{
			"--listen-address", clientURL.Host, "--metrics-bind-address", "0",
			"--endpoint", "sqlite://" + filepath.Join(cfg.Dir, "state.db") +
				"?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate&_stmt_cache_size=20&cache=shared", // kine's defaults
			"--watch-progress-notify-interval", notify,
			"--compact-interval", "0", "--compact-min-retain", "0",
		}, nil
	}
	return nil, fmt.Errorf("testserver: STORAGE_BACKEND=%q: use datastore, etcd or kine", backend)
}

// waitReady waits until the server answers a read, or fails the test (with the server's
// log) when it exits or does not answer within startTimeout.
func waitReady(t testing.TB, client *kubernetes.Client, exited <-chan struct{}, logPath string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.Client.KV.Get(ctx, "/testserver-ready")
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("testserver: the server exited before it was ready; its log:\n%s", tail(logPath, 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testserver: not ready after %s (%v); its log:\n%s", startTimeout, err, tail(logPath, 40))
		}
		time.Sleep(50 * time.Millisecond) // poll interval, not synchronisation
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
