// Command gopeer is the benchmark's Go peer: a consumer proxy built the way the Go freedom framework
// (github.com/8treenet/freedom) works, written for the benchmark (none of its code is used).
//
//	gopeer consume  -brokers B -topic T -group G -expect N -probe FILE [-slow-ms 50] [-workers 500]
//	gopeer publish  -brokers B -topic T -addr 127.0.0.1:PORT
//	gopeer load     -url URL -clients 50 -requests N
//
// consume: a sarama consumer group; each record is handed to a pool of -workers goroutines, which
// POST it over keep-alive HTTP/1.1 (net/http) to the net/http handler of the same process (the
// benchmark's trivial handler: parse the JSON body, answer {"ok":true}; -slow-ms sleeps first).
// Unlike the Go original's concurrent mode, which marks a record's offset when it is handed to the
// pool, an offset is marked only once the record and every record before it on its partition was
// delivered (a 200), so a crash never skips a record. The handler reports to -probe as
// bench/services/bench_probe.py does (count, t_first, t_last), for the harness to read.
//
// publish: an HTTP route GET /bench/publish that produces one 100-byte record with a sarama
// SyncProducer (as the Go original's producer does) and answers once the broker acknowledged it.
//
// load: -clients keep-alive HTTP/1.1 clients send -requests GETs between them (after one warm-up
// request each) and print {"requests": n, "errors": e, "seconds": s} as one JSON line.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/rcrowley/go-metrics"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gopeer consume|publish|load [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "consume":
		err = consume(os.Args[2:])
	case "publish":
		err = publish(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (consume, publish, load)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gopeer:", err)
		os.Exit(1)
	}
}

// stopContext is cancelled on SIGTERM or SIGINT (the harness stops a consumer with SIGTERM).
func stopContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// ----------------------------------------------------------------------------- sarama settings

// kafkaVersion: the protocol level sarama speaks (the benchmark's broker is Apache Kafka 4.x).
var kafkaVersion = sarama.V4_0_0_0

// tuning: the consumer settings that the flags of `gopeer consume` can change (for experiments;
// the defaults are the ones measured).
type tuning struct {
	commit time.Duration
	fetch  int32
	buffer int
}

// consumerConfig is sarama's consumer group configuration, tuned for a backlog of small records.
func consumerConfig(t tuning) *sarama.Config {
	c := sarama.NewConfig()
	c.Version = kafkaVersion
	c.ClientID = "gopeer"
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	// Commit marked offsets every 100 ms (default 1 s): the benchmark's clock stops when the last
	// offset is committed, and a commit request every 100 ms costs nothing measurable.
	c.Consumer.Offsets.AutoCommit.Enable = true
	c.Consumer.Offsets.AutoCommit.Interval = t.commit
	// Bigger fetches and buffers than the defaults (1 MiB per partition, 256 messages per channel):
	// fewer fetch round trips, and the pool never waits for the fetcher.
	c.Consumer.Fetch.Min = 1
	c.Consumer.Fetch.Default = t.fetch
	c.Consumer.Fetch.Max = 16 << 20
	c.Consumer.MaxWaitTime = 250 * time.Millisecond
	c.ChannelBufferSize = t.buffer
	// A claim loop may block while the pool is full; with 100 ms (the default) sarama would stop
	// fetching that partition every time it does.
	c.Consumer.MaxProcessingTime = time.Second
	c.Consumer.Return.Errors = false
	// The same group timing as the freedom services under benchmark (session.timeout.ms = 6000).
	c.Consumer.Group.Session.Timeout = 6 * time.Second
	c.Consumer.Group.Heartbeat.Interval = 2 * time.Second
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyRange()}
	c.Metadata.RefreshFrequency = 5 * time.Minute
	return c
}

// producerConfig matches freedom's producer defaults: acks=all, idempotent, lz4.
func producerConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = kafkaVersion
	c.ClientID = "gopeer"
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1 // what sarama requires for idempotence
	c.Producer.Compression = sarama.CompressionLZ4
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	// No linger: the records of the requests waiting while one produce request is in flight go
	// together in the next one, which is the batching a synchronous route gets anyway.
	c.Producer.Flush.Frequency = 0
	c.Producer.Flush.MaxMessages = 0
	c.ChannelBufferSize = 1024
	return c
}

func init() {
	sarama.Logger = log.New(io.Discard, "", 0)
	// sarama's go-metrics meters cost CPU on every request; the benchmark reads none of them.
	metrics.UseNilMetrics = true
}

// ----------------------------------------------------------------------------- probe

// probe counts handled records and writes the state file the harness polls (bench_probe.py's format).
type probe struct {
	path   string
	expect int64
	count  atomic.Int64
	warm   atomic.Int64
	mu     sync.Mutex
	first  float64
	last   float64
}

func epoch() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func (p *probe) hit(body map[string]any) {
	now := epoch()
	if w, ok := body["warm"]; ok && w != nil && w != false && w != float64(0) {
		if p.warm.Add(1) == 1 {
			p.write()
		}
		return
	}
	n := p.count.Add(1)
	if n == 1 {
		p.mu.Lock()
		p.first = now
		p.mu.Unlock()
		p.write()
	}
	if n == p.expect {
		p.mu.Lock()
		p.last = now
		p.mu.Unlock()
		p.write()
	}
}

func (p *probe) write() {
	if p.path == "" {
		return
	}
	p.mu.Lock()
	state := map[string]any{"count": p.count.Load(), "warm": p.warm.Load(), "t_first": nullable(p.first),
		"t_last": nullable(p.last), "latencies": []float64{}}
	data, _ := json.Marshal(state)
	tmp := p.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err == nil {
		_ = os.Rename(tmp, p.path)
	}
	p.mu.Unlock()
}

func nullable(t float64) any {
	if t == 0 {
		return nil
	}
	return t
}

// ----------------------------------------------------------------------------- consume

// pending is one record between its claim loop, a worker and its partition's marker.
type pending struct {
	msg  *sarama.ConsumerMessage
	done chan struct{} // closed once the record was delivered
}

type proxy struct {
	url     string
	client  *http.Client
	tasks   chan *pending
	retries atomic.Int64
}

// deliver POSTs the record until the handler answers 200 (or the session ends).
func (p *proxy) deliver(ctx context.Context, item *pending) {
	for {
		err := p.post(ctx, item.msg)
		if err == nil {
			close(item.done)
			return
		}
		p.retries.Add(1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *proxy) post(ctx context.Context, msg *sarama.ConsumerMessage) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(msg.Value))
	if err != nil {
		return err
	}
	for _, h := range msg.Headers {
		req.Header.Set(string(h.Key), string(h.Value))
	}
	req.Header.Set("x-message-key", string(msg.Key))
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body) // read to the end, so the connection is reused
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// group is the sarama.ConsumerGroupHandler: per claimed partition, records go to the worker pool
// in offset order, and a marker marks each offset once it and every one before it was delivered.
type group struct {
	proxy *proxy
	ctx   context.Context // the task context of the workers (the whole run)
}

func (g *group) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (g *group) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (g *group) ConsumeClaim(session sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	order := make(chan *pending, 4096)
	marked := make(chan struct{})
	sctx := session.Context()
	go func() {
		defer close(marked)
		for item := range order {
			select {
			case <-item.done:
				session.MarkMessage(item.msg, "")
			case <-sctx.Done():
				for range order { // the session ended: drain, marking nothing more
				}
				return
			}
		}
	}()
	defer func() {
		close(order)
		<-marked
	}()
	for {
		select {
		case msg, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			item := &pending{msg: msg, done: make(chan struct{})}
			select {
			case order <- item:
			case <-sctx.Done():
				return nil
			}
			select {
			case g.proxy.tasks <- item:
			case <-sctx.Done():
				return nil
			}
		case <-sctx.Done():
			return nil
		}
	}
}

func consume(args []string) error {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "bootstrap servers, comma-separated")
	topic := fs.String("topic", "", "topic to consume")
	groupID := fs.String("group", "", "consumer group id")
	expect := fs.Int64("expect", 0, "records after which the probe writes t_last")
	probePath := fs.String("probe", os.Getenv("BENCH_PROBE"), "the probe state file")
	slowMS := fs.Int("slow-ms", 0, "the handler sleeps this long before answering")
	workers := fs.Int("workers", 500, "delivery goroutines (the Go original's default rate limit)")
	var t tuning
	fs.DurationVar(&t.commit, "commit-interval", 100*time.Millisecond, "sarama Consumer.Offsets.AutoCommit.Interval")
	fetchKB := fs.Int("fetch-kb", 4096, "sarama Consumer.Fetch.Default, KiB per partition")
	fs.IntVar(&t.buffer, "buffer", 4096, "sarama ChannelBufferSize")
	_ = fs.Parse(args)
	t.fetch = int32(*fetchKB) << 10
	if *topic == "" || *groupID == "" {
		return errors.New("consume needs -topic and -group")
	}
	ctx, stop := stopContext()
	defer stop()

	pr := &probe{path: *probePath, expect: *expect}
	slow := time.Duration(*slowMS) * time.Millisecond
	mux := http.NewServeMux()
	mux.HandleFunc("POST /bench/event", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"detail":"bad json"}`, http.StatusUnprocessableEntity)
			return
		}
		if slow > 0 {
			time.Sleep(slow)
		}
		pr.hit(body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	go func() { _ = server.Serve(ln) }()
	defer server.Close()

	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        *workers,
		MaxIdleConnsPerHost: *workers, // the default (2) would open and close a connection per delivery
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	px := &proxy{url: "http://" + ln.Addr().String() + "/bench/event",
		client: &http.Client{Transport: transport, Timeout: 60 * time.Second},
		tasks:  make(chan *pending, *workers)}
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for item := range px.tasks {
				px.deliver(ctx, item)
			}
		}()
	}

	client, err := sarama.NewConsumerGroup(strings.Split(*brokers, ","), *groupID, consumerConfig(t))
	if err != nil {
		return err
	}
	handler := &group{proxy: px, ctx: ctx}
	for ctx.Err() == nil {
		if err := client.Consume(ctx, []string{*topic}, handler); err != nil && !errors.Is(err, sarama.ErrClosedConsumerGroup) {
			fmt.Fprintln(os.Stderr, "gopeer: consume:", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	err = client.Close() // commits what was marked
	close(px.tasks)
	wg.Wait()
	if n := px.retries.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "gopeer: %d deliveries retried\n", n)
	}
	return err
}

// ----------------------------------------------------------------------------- publish

// value is the 100-byte record the publish path sends (bench/services/publisher.py's VALUE).
var value = []byte(`{"pad":"` + strings.Repeat("x", 90) + `"}`)

func publish(args []string) error {
	fs := flag.NewFlagSet("publish", flag.ExitOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "bootstrap servers, comma-separated")
	topic := fs.String("topic", "", "topic to publish to")
	addr := fs.String("addr", "127.0.0.1:0", "where the HTTP route listens")
	_ = fs.Parse(args)
	if *topic == "" {
		return errors.New("publish needs -topic")
	}
	ctx, stop := stopContext()
	defer stop()
	producer, err := sarama.NewSyncProducer(strings.Split(*brokers, ","), producerConfig())
	if err != nil {
		return err
	}
	defer producer.Close()
	// Warm-up, before the route listens: connected, metadata, producer id.
	if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: *topic, Value: sarama.ByteEncoder(value)}); err != nil {
		return fmt.Errorf("warm-up publish: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bench/publish", func(w http.ResponseWriter, r *http.Request) {
		msg := &sarama.ProducerMessage{Topic: *topic, Value: sarama.ByteEncoder(value)}
		if _, _, err := producer.SendMessage(msg); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	go func() { _ = server.Serve(ln) }()
	fmt.Printf("listening %s\n", ln.Addr())
	<-ctx.Done()
	return server.Close()
}

// ----------------------------------------------------------------------------- load

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "the URL to GET")
	clients := fs.Int("clients", 50, "keep-alive clients (one connection each)")
	requests := fs.Int64("requests", 10000, "requests in all, after one warm-up request per client")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	_ = fs.Parse(args)
	if *url == "" || *clients < 1 || *requests < 1 {
		return errors.New("load needs -url, -clients >= 1 and -requests >= 1")
	}
	transport := &http.Transport{MaxIdleConns: *clients, MaxIdleConnsPerHost: *clients, MaxConnsPerHost: *clients,
		IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 60 * time.Second}
	get := func() error {
		resp, err := client.Get(*url)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	var warm sync.WaitGroup
	for i := 0; i < *clients; i++ {
		warm.Add(1)
		go func() { defer warm.Done(); _ = get() }()
	}
	warm.Wait()
	var left, errs atomic.Int64
	left.Store(*requests)
	deadline := time.Now().Add(*timeout)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 && time.Now().Before(deadline) {
				if err := get(); err != nil {
					errs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	seconds := time.Since(t0).Seconds()
	done := *requests
	if l := left.Load(); l > 0 {
		done -= l
	}
	out, _ := json.Marshal(map[string]any{"requests": done, "errors": errs.Load(), "seconds": seconds})
	fmt.Println(string(out))
	if errs.Load() > 0 {
		return fmt.Errorf("%d of %d requests failed", errs.Load(), done)
	}
	return nil
}
