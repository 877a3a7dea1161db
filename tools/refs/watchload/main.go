// Command watchload is the watch fan-out load of scripts/bench_watch.py in Go, so that
// the load generator is not what limits the measurement: W watchers on one prefix (P of
// them created on each Watch stream, S streams per connection), then one writer putting
// at R writes/s for D. It prints "ready" once every watcher is created, then one JSON
// object with what was delivered and the delivery latency: from a put's acknowledgement
// to each watcher's receipt of its event (clamped at 0).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type watcher struct {
	mu    sync.Mutex
	count int64
	last  int64
	bad   int64
	revs  []int64
	times []time.Duration // receipt, since the run's clock zero
}

type result struct {
	Writes            int      `json:"writes"`
	WriteErrors       int      `json:"write_errors"`
	WritesPerS        float64  `json:"writes_per_s"`
	EventsExpected    int64    `json:"events_expected"`
	EventsDelivered   int64    `json:"events_delivered"`
	BadEvents         int64    `json:"bad_events"`
	EventsPerResponse float64  `json:"events_per_response"`
	WatchersComplete  int      `json:"watchers_complete"`
	HistoryCaughtUpS  *float64 `json:"history_caught_up_s"`
	P50Ms             float64  `json:"p50_ms"`
	P99Ms             float64  `json:"p99_ms"`
	MaxMs             float64  `json:"max_ms"`
	AllComplete       bool     `json:"all_complete"`
	CompleteAfterS    float64  `json:"complete_after_s"`
}

func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "watchload: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "the member's client address")
	nWatchers := flag.Int("watchers", 1000, "watchers on the prefix")
	perStream := flag.Int("per-stream", 100, "watchers created on each Watch stream")
	streamsPerConn := flag.Int("streams-per-conn", 10, "Watch streams on each connection")
	rate := flag.Float64("rate", 40, "puts per second")
	duration := flag.Duration("duration", 10*time.Second, "how long the writer puts")
	history := flag.Int("history", 0, "puts made before the watchers, which start at the first of them")
	drain := flag.Duration("drain", 30*time.Second, "wait after the last put for every event")
	prefix := flag.String("prefix", "/registry/bench/", "the watched prefix")
	flag.Parse()

	zero := time.Now()
	since := func() time.Duration { return time.Since(zero) }
	key := []byte(*prefix)
	end := prefixEnd(key)
	dial := func() *grpc.ClientConn {
		c, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)))
		if err != nil {
			fail("dial %s: %v", *endpoint, err)
		}
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wconn := dial()
	kv := pb.NewKVClient(wconn)
	value := make([]byte, 256)
	for i := range value {
		value[i] = 'v'
	}

	// history (scenario d): puts before the watchers, which then start at the first
	startRev := int64(0)
	if *history > 0 {
		var first atomic.Int64
		first.Store(math.MaxInt64)
		var wg sync.WaitGroup
		next := atomic.Int64{}
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= int64(*history) {
						return
					}
					r, err := kv.Put(ctx, &pb.PutRequest{Key: fmt.Appendf(append([]byte(nil), key...), "k%05d", i%1000), Value: value})
					if err != nil {
						fail("history put: %v", err)
					}
					for {
						f := first.Load()
						if r.Header.Revision >= f || first.CompareAndSwap(f, r.Header.Revision) {
							break
						}
					}
				}
			}()
		}
		wg.Wait()
		startRev = first.Load()
	}
	liveFrom := startRev + int64(*history)

	watchers := make([]*watcher, *nWatchers)
	var responses atomic.Int64
	nStreams := (*nWatchers + *perStream - 1) / *perStream
	var conns []*grpc.ClientConn
	var created sync.WaitGroup
	for s := 0; s < nStreams; s++ {
		if s%*streamsPerConn == 0 {
			conns = append(conns, dial())
		}
		stream, err := pb.NewWatchClient(conns[len(conns)-1]).Watch(ctx)
		if err != nil {
			fail("watch stream: %v", err)
		}
		k := min(*perStream, *nWatchers-s**perStream)
		for i := 0; i < k; i++ {
			err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
				CreateRequest: &pb.WatchCreateRequest{Key: key, RangeEnd: end, StartRevision: startRev}}})
			if err != nil {
				fail("watch create: %v", err)
			}
		}
		ids := map[int64]*watcher{}
		base := s * *perStream
		created.Add(1)
		go func() {
			n := 0
			for {
				r, err := stream.Recv()
				if err != nil {
					return
				}
				if r.Created {
					if r.Canceled {
						fail("watch not created: %s", r.CancelReason)
					}
					w := &watcher{}
					watchers[base+n] = w
					ids[r.WatchId] = w
					n++
					if n == k {
						created.Done()
					}
					continue
				}
				if len(r.Events) == 0 {
					continue
				}
				responses.Add(1)
				now := since()
				w := ids[r.WatchId]
				if w == nil {
					fail("events for an unknown watch id %d", r.WatchId)
				}
				w.mu.Lock()
				for _, ev := range r.Events {
					rev := ev.Kv.ModRevision
					if rev <= w.last {
						w.bad++
						continue
					}
					w.last = rev
					w.count++
					if rev >= liveFrom {
						w.revs = append(w.revs, rev)
						w.times = append(w.times, now)
					}
				}
				w.mu.Unlock()
			}
		}()
	}
	created.Wait()
	tReady := since()
	fmt.Println("ready")

	counts := func() (min int64, all []int64) {
		min = math.MaxInt64
		for _, w := range watchers {
			w.mu.Lock()
			c := w.count
			w.mu.Unlock()
			all = append(all, c)
			if c < min {
				min = c
			}
		}
		return
	}
	var historyDone time.Duration
	stopPoll := make(chan struct{})
	if *history > 0 {
		go func() {
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopPoll:
					return
				case <-t.C:
					if m, _ := counts(); m >= int64(*history) {
						historyDone = since()
						return
					}
				}
			}
		}()
	}

	// the writer: puts on schedule, each in its own goroutine (as the Python writer)
	acks := map[int64]time.Duration{}
	var amu sync.Mutex
	var writeErrors atomic.Int64
	n := int(*rate * duration.Seconds())
	t0 := since()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		if d := t0 + time.Duration(float64(i)/(*rate)*float64(time.Second)) - since(); d > 0 {
			time.Sleep(d) // the write schedule, not synchronisation
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, cc := context.WithTimeout(ctx, 30*time.Second)
			defer cc()
			r, err := kv.Put(c, &pb.PutRequest{Key: fmt.Appendf(append([]byte(nil), key...), "k%05d", i%1000), Value: value})
			if err != nil {
				writeErrors.Add(1)
				return
			}
			at := since()
			amu.Lock()
			acks[r.Header.Revision] = at
			amu.Unlock()
		}(i)
	}
	wg.Wait()
	elapsed := since() - t0

	want := int64(*history + len(acks))
	tEnd := since()
	complete := false
	for since()-tEnd < *drain {
		if m, _ := counts(); m >= want {
			complete = true
			break
		}
		time.Sleep(20 * time.Millisecond) // poll interval of the completion condition
	}
	completeAfter := since() - tEnd
	close(stopPoll)
	cancel()

	var lat []float64
	res := result{Writes: len(acks), WriteErrors: int(writeErrors.Load()), EventsExpected: want * int64(*nWatchers),
		AllComplete: complete, CompleteAfterS: round2(completeAfter.Seconds())}
	res.WritesPerS = round2(float64(len(acks)) / elapsed.Seconds())
	_, all := counts()
	for i, w := range watchers {
		w.mu.Lock()
		res.EventsDelivered += all[i]
		res.BadEvents += w.bad
		if all[i] >= want {
			res.WatchersComplete++
		}
		for j, rev := range w.revs {
			if a, ok := acks[rev]; ok {
				lat = append(lat, math.Max(0, (w.times[j]-a).Seconds()))
			}
		}
		w.mu.Unlock()
	}
	res.EventsPerResponse = round2(float64(res.EventsDelivered) / math.Max(1, float64(responses.Load())))
	sort.Float64s(lat)
	pct := func(q float64) float64 {
		if len(lat) == 0 {
			return math.NaN()
		}
		return round2(lat[min(len(lat)-1, int(q*float64(len(lat))))] * 1000)
	}
	res.P50Ms, res.P99Ms = pct(0.50), pct(0.99)
	if len(lat) > 0 {
		res.MaxMs = round2(lat[len(lat)-1] * 1000)
	}
	if *history > 0 && historyDone > 0 {
		v := round2((historyDone - tReady).Seconds())
		res.HistoryCaughtUpS = &v
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
