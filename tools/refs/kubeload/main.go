// Command kubeload drives one control-plane workload through a kube-apiserver with
// client-go and prints the results as one JSON object on stdout.
//
// Phases, one after the other, each with its own CPU accounting:
//
//	create  --pods pods created by --clients goroutines as fast as the API server takes them
//	list    the namespace's pods listed in pages of --page, --list-repeat times
//	watch   --watchers watches of the namespace's pods, then --watch-pods pods created at
//	        --watch-rate per second; each event's delay after the create's ack (and after
//	        the create was sent) at each watcher
//
// Pods name a scheduler that does not exist, so nothing else writes them: every write the
// storage sees is one of ours. CPU is read from /proc/PID/stat (utime+stime, the process
// and its descendants) for each --pid group, and from getrusage for kubeload itself.
// It is part of the datastore project's control-plane benchmark (scripts/bench_controlplane.py).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

type pidGroups map[string][]int

func (g pidGroups) String() string { return fmt.Sprint(map[string][]int(g)) }

// Set parses NAME=PID[,PID...]; a name given twice gathers all its pids.
func (g pidGroups) Set(v string) error {
	name, list, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("--pid wants NAME=PID[,PID...], got %q", v)
	}
	for _, s := range strings.Split(list, ",") {
		pid, err := strconv.Atoi(s)
		if err != nil || pid <= 0 {
			return fmt.Errorf("--pid %s: %q is not a process id", name, s)
		}
		g[name] = append(g[name], pid)
	}
	return nil
}

type config struct {
	Kubeconfig string        `json:"-"`
	Namespace  string        `json:"namespace"`
	Pods       int           `json:"pods"`
	Clients    int           `json:"clients"`
	Page       int64         `json:"page"`
	ListRepeat int           `json:"list_repeat"`
	Watchers   int           `json:"watchers"`
	WatchPods  int           `json:"watch_pods"`
	WatchRate  float64       `json:"watch_rate"`
	Timeout    time.Duration `json:"-"`
	pids       pidGroups
}

var clkTck = 100.0 // USER_HZ: 100 on every Linux kernel kubeload runs on

// cpuSeconds is utime+stime of pid and all its live descendants.
func cpuSeconds(pids []int) float64 {
	children := map[int][]int{}
	own := map[int]float64{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, cpu, ok := readStat(pid)
		if !ok {
			continue
		}
		children[ppid] = append(children[ppid], pid)
		own[pid] = cpu
	}
	total := 0.0
	var walk func(int)
	walk = func(p int) {
		total += own[p]
		for _, c := range children[p] {
			walk(c)
		}
	}
	for _, p := range pids {
		walk(p)
	}
	return total
}

func readStat(pid int) (ppid int, cpu float64, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return ppid, (ut + st) / clkTck, true
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// meter takes CPU readings at a phase's start and end.
type meter struct {
	cfg   *config
	start map[string]float64
	t0    time.Time
}

func (c *config) meter() *meter {
	m := &meter{cfg: c, start: map[string]float64{"client": selfCPU()}, t0: time.Now()}
	for name, pids := range c.pids {
		m.start[name] = cpuSeconds(pids)
	}
	return m
}

func (m *meter) stop() (map[string]float64, float64) {
	wall := time.Since(m.t0).Seconds()
	out := map[string]float64{"client": selfCPU() - m.start["client"]}
	for name, pids := range m.cfg.pids {
		out[name] = cpuSeconds(pids) - m.start[name]
	}
	return out, wall
}

type latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func summarize(ms []float64) latency {
	if len(ms) == 0 {
		return latency{}
	}
	sort.Float64s(ms)
	q := func(p float64) float64 {
		return ms[int(math.Min(float64(len(ms)-1), math.Ceil(p*float64(len(ms)))-1))]
	}
	return latency{len(ms), q(0.50), q(0.90), q(0.99), ms[len(ms)-1]}
}

type createResult struct {
	Pods      int                `json:"pods"`
	Errors    int                `json:"errors"`
	FirstErr  string             `json:"first_error,omitempty"`
	Seconds   float64            `json:"seconds"`
	PerSecond float64            `json:"per_s"`
	LatencyMs latency            `json:"latency_ms"`
	CPU       map[string]float64 `json:"cpu_s"`
}

type listResult struct {
	Items    int                `json:"items"`
	Pages    int                `json:"pages"`
	RunsMs   []float64          `json:"runs_ms"`
	MedianMs float64            `json:"median_ms"`
	Seconds  float64            `json:"seconds"`
	CPU      map[string]float64 `json:"cpu_s"`
}

type watchResult struct {
	Watchers      int                `json:"watchers"`
	Pods          int                `json:"pods"`
	Errors        int                `json:"create_errors"`
	TargetRate    float64            `json:"target_rate"`
	Rate          float64            `json:"rate"`
	Expected      int                `json:"events_expected"`
	Delivered     int                `json:"events_delivered"`
	BeforeAck     int                `json:"events_before_ack"`
	FromAckMs     latency            `json:"from_ack_ms"`
	FromSendMs    latency            `json:"from_send_ms"`
	CreateMs      latency            `json:"create_latency_ms"`
	Seconds       float64            `json:"seconds"`
	CPU           map[string]float64 `json:"cpu_s"`
	WatchErrorMsg string             `json:"watch_error,omitempty"`
}

type result struct {
	Config config        `json:"config"`
	Create *createResult `json:"create,omitempty"`
	List   *listResult   `json:"list,omitempty"`
	Watch  *watchResult  `json:"watch,omitempty"`
}

func pod(name string) *corev1.Pod {
	no := false
	grace := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "kubeload"}},
		Spec: corev1.PodSpec{
			// No such scheduler: the pod stays Pending and untouched.
			SchedulerName:                 "kubeload-none",
			AutomountServiceAccountToken:  &no,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "pause", Image: "registry.k8s.io/pause:3.10",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("10m"),
					corev1.ResourceMemory: resource.MustParse("16Mi"),
				}},
			}},
		},
	}
}

// createAll creates n pods named prefix-NNNNNN with `clients` goroutines. With rate > 0
// pod i is sent no earlier than start + i/rate. sent and acked receive each pod's times.
func createAll(ctx context.Context, cs kubernetes.Interface, ns, prefix string, n, clients int,
	rate float64, t0 time.Time, sent, acked []int64) (lat []float64, errs int, firstErr string) {
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					break
				}
				if rate > 0 {
					if d := time.Until(start.Add(time.Duration(float64(i) / rate * 1e9))); d > 0 {
						time.Sleep(d)
					}
				}
				p := pod(fmt.Sprintf("%s-%06d", prefix, i))
				s := time.Now()
				if sent != nil {
					sent[i] = int64(s.Sub(t0))
				}
				_, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
				e := time.Now()
				if acked != nil {
					atomic.StoreInt64(&acked[i], int64(e.Sub(t0)))
				}
				if err != nil {
					mu.Lock()
					if errs == 0 {
						firstErr = err.Error()
					}
					errs++
					mu.Unlock()
					continue
				}
				mine = append(mine, float64(e.Sub(s))/1e6)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return lat, errs, firstErr
}

func runCreate(ctx context.Context, cfg *config, cs kubernetes.Interface) *createResult {
	m := cfg.meter()
	lat, errs, first := createAll(ctx, cs, cfg.Namespace, "c", cfg.Pods, cfg.Clients, 0,
		time.Now(), nil, nil)
	cpu, wall := m.stop()
	return &createResult{Pods: cfg.Pods - errs, Errors: errs, FirstErr: first, Seconds: wall,
		PerSecond: float64(cfg.Pods-errs) / wall, LatencyMs: summarize(lat), CPU: cpu}
}

func runList(ctx context.Context, cfg *config, cs kubernetes.Interface) (*listResult, error) {
	res := &listResult{}
	m := cfg.meter()
	for r := 0; r < cfg.ListRepeat; r++ {
		items, pages, cont := 0, 0, ""
		s := time.Now()
		for {
			l, err := cs.CoreV1().Pods(cfg.Namespace).List(ctx, metav1.ListOptions{
				Limit: cfg.Page, Continue: cont})
			if err != nil {
				return nil, fmt.Errorf("list page %d: %w", pages+1, err)
			}
			items += len(l.Items)
			pages++
			cont = l.Continue
			if cont == "" {
				break
			}
		}
		res.RunsMs = append(res.RunsMs, float64(time.Since(s))/1e6)
		res.Items, res.Pages = items, pages
	}
	res.CPU, res.Seconds = m.stop()
	sorted := append([]float64(nil), res.RunsMs...)
	sort.Float64s(sorted)
	res.MedianMs = sorted[len(sorted)/2]
	return res, nil
}

var (
	typeAdded = []byte(`{"type":"ADDED"`)
	namePfx   = []byte(`"name":"w-`)
)

// watcher reads one raw watch stream (JSON, one event a line) and stamps each ADDED w-N
// pod's arrival; parsing only the name keeps kubeload's CPU far below the API server's.
func watcher(body io.ReadCloser, t0 time.Time, recv []int64, got *atomic.Int64) error {
	defer body.Close()
	r := bufio.NewReaderSize(body, 1<<20)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("watch event longer than 1 MiB")
		}
		if len(line) > 0 && bytes.HasPrefix(line, typeAdded) {
			now := int64(time.Since(t0))
			if j := bytes.Index(line, namePfx); j >= 0 {
				k := j + len(namePfx)
				e := bytes.IndexByte(line[k:], '"')
				if i, perr := strconv.Atoi(string(line[k : k+e])); perr == nil && i < len(recv) &&
					recv[i] == 0 {
					recv[i] = now
					got.Add(1)
				}
			}
		} else if bytes.HasPrefix(line, []byte(`{"type":"ERROR"`)) {
			return fmt.Errorf("watch error event: %s", bytes.TrimSpace(line))
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
	}
}

func runWatch(ctx context.Context, cfg *config, cs kubernetes.Interface,
	raw rest.Interface) (*watchResult, error) {
	res := &watchResult{Watchers: cfg.Watchers, Pods: cfg.WatchPods, TargetRate: cfg.WatchRate,
		Expected: cfg.Watchers * cfg.WatchPods}
	// Start from the namespace's current resourceVersion, so no old pod is replayed.
	l, err := cs.CoreV1().Pods(cfg.Namespace).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t0 := time.Now()
	recv := make([][]int64, cfg.Watchers)
	var got atomic.Int64
	var wg sync.WaitGroup
	var errMu sync.Mutex
	for w := range recv {
		recv[w] = make([]int64, cfg.WatchPods)
		// The stream is open once the API server has sent the response headers.
		body, err := raw.Get().Namespace(cfg.Namespace).Resource("pods").
			Param("watch", "true").Param("resourceVersion", l.ResourceVersion).
			Param("allowWatchBookmarks", "false").Param("timeoutSeconds", "3600").Stream(wctx)
		if err != nil {
			return nil, fmt.Errorf("watcher %d: %w", w, err)
		}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			if err := watcher(body, t0, recv[w], &got); err != nil && wctx.Err() == nil {
				errMu.Lock()
				if res.WatchErrorMsg == "" {
					res.WatchErrorMsg = fmt.Sprintf("watcher %d: %v", w, err)
				}
				errMu.Unlock()
			}
		}(w)
	}
	m := cfg.meter()
	sent := make([]int64, cfg.WatchPods)
	acked := make([]int64, cfg.WatchPods)
	cs0 := time.Now()
	lat, errs, _ := createAll(ctx, cs, cfg.Namespace, "w", cfg.WatchPods, cfg.Clients,
		cfg.WatchRate, t0, sent, acked)
	res.Rate = float64(cfg.WatchPods) / time.Since(cs0).Seconds()
	res.Errors = errs
	res.CreateMs = summarize(lat)
	want := int64((cfg.WatchPods - errs) * cfg.Watchers)
	deadline := time.Now().Add(cfg.Timeout)
	for got.Load() < want && time.Now().Before(deadline) && res.WatchErrorMsg == "" {
		time.Sleep(20 * time.Millisecond) // poll interval of the delivery count
	}
	res.CPU, res.Seconds = m.stop()
	cancel()
	wg.Wait()
	var fromAck, fromSend []float64
	for w := range recv {
		for i, t := range recv[w] {
			if t == 0 {
				continue
			}
			res.Delivered++
			a := float64(t-acked[i]) / 1e6
			if a < 0 {
				res.BeforeAck++
				a = 0
			}
			fromAck = append(fromAck, a)
			fromSend = append(fromSend, float64(t-sent[i])/1e6)
		}
	}
	res.FromAckMs, res.FromSendMs = summarize(fromAck), summarize(fromSend)
	return res, nil
}

func ensureNamespace(ctx context.Context, cs kubernetes.Interface, ns string) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// The ServiceAccount admission plugin wants "default" even when no token is mounted;
	// the controller that makes it may not be running.
	_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

func main() {
	cfg := &config{pids: pidGroups{}}
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "admin kubeconfig (required)")
	flag.StringVar(&cfg.Namespace, "namespace", "kubeload", "namespace to create pods in")
	flag.IntVar(&cfg.Pods, "pods", 10000, "pods to create in the create phase (0 skips it)")
	flag.IntVar(&cfg.Clients, "clients", 32, "concurrent creating goroutines")
	flag.Int64Var(&cfg.Page, "page", 500, "LIST page size")
	flag.IntVar(&cfg.ListRepeat, "list-repeat", 5, "full paged LISTs (0 skips the phase)")
	flag.IntVar(&cfg.Watchers, "watchers", 100, "watches of the namespace's pods (0 skips the phase)")
	flag.IntVar(&cfg.WatchPods, "watch-pods", 1000, "pods created while the watchers listen")
	flag.Float64Var(&cfg.WatchRate, "watch-rate", 100, "creates per second in the watch phase")
	flag.DurationVar(&cfg.Timeout, "timeout", 120*time.Second, "longest wait for watch events")
	flag.Var(cfg.pids, "pid", "NAME=PID[,PID...]: a process group whose CPU to report (repeatable)")
	flag.Parse()
	if cfg.Kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "kubeload: error: --kubeconfig is required (the admin kubeconfig of the control plane)")
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "kubeload: error: %v\n", err)
		os.Exit(1)
	}
}

func run(cfg *config) error {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = -1, 0 // no client-side rate limit: the server is what we measure
	rc.Timeout = 60 * time.Second
	// Protobuf, as the controllers speak it; the watch streams below read JSON lines.
	pb := rest.CopyConfig(rc)
	pb.ContentType = "application/vnd.kubernetes.protobuf"
	pb.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cs, err := kubernetes.NewForConfig(pb)
	if err != nil {
		return err
	}
	jc := rest.CopyConfig(rc)
	jc.Timeout = 0 // watches are long requests
	jc.AcceptContentTypes = "application/json"
	watchCS, err := kubernetes.NewForConfig(jc)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := ensureNamespace(ctx, cs, cfg.Namespace); err != nil {
		return fmt.Errorf("namespace %s: %w", cfg.Namespace, err)
	}
	out := result{Config: *cfg}
	if cfg.Pods > 0 {
		out.Create = runCreate(ctx, cfg, cs)
	}
	if cfg.ListRepeat > 0 {
		if out.List, err = runList(ctx, cfg, cs); err != nil {
			return err
		}
	}
	if cfg.Watchers > 0 && cfg.WatchPods > 0 {
		if out.Watch, err = runWatch(ctx, cfg, cs, watchCS.CoreV1().RESTClient()); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
