package difftest

import (
	"context"
	"flag"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	dflockdBinary = flag.String("difftest.dflockd", "", "path of a dflockd v1.10.0 binary (without it the differential tests skip)")
	numSessions   = flag.Int("difftest.sessions", 200, "random sessions to play")
	firstSeed     = flag.Uint64("difftest.seed", 1, "seed of the first random session; session i uses seed+i")
	stepsPerRun   = flag.Int("difftest.steps", 40, "steps per random session")
	parallel      = flag.Int("difftest.parallel", 2, "random sessions played at once")
	onlySession   = flag.String("difftest.session", "", "replay only the random session with this seed")
	allFlag       = flag.Bool("difftest.all", false, "also fail on the scenarios that show a deliberate difference")
	avoidFlag     = flag.String("difftest.avoid", "overflow", "comma-separated input classes to leave out of random sessions (see avoidClasses); the default leaves out the deliberate difference")
)

// maxSessionTime ends a random session early: its leases (30 s and up)
// must not expire while it runs.
const maxSessionTime = 15 * time.Second

func requireBinary(t *testing.T) string {
	t.Helper()
	if *dflockdBinary == "" {
		t.Skip("no -difftest.dflockd binary given")
	}
	return *dflockdBinary
}

// TestDifferential plays seeded random sessions against dflockd and
// testutil in lock-step and fails if any session saw them differ.
func TestDifferential(t *testing.T) {
	binary := requireBinary(t)
	seeds := make([]uint64, 0, *numSessions)
	if *onlySession != "" {
		seed, err := strconv.ParseUint(*onlySession, 10, 64)
		if err != nil {
			t.Fatalf("-difftest.session: %v", err)
		}
		seeds = append(seeds, seed)
	} else {
		for i := range *numSessions {
			seeds = append(seeds, *firstSeed+uint64(i))
		}
	}

	avoid := map[string]bool{}
	for _, c := range strings.Split(*avoidFlag, ",") {
		if c == "" {
			continue
		}
		if _, ok := avoidClasses[c]; !ok {
			t.Fatalf("-difftest.avoid: unknown class %q (known: %v)", c, avoidClasses)
		}
		avoid[c] = true
	}

	var (
		mu         sync.Mutex
		mismatched []uint64
		clean      int
	)
	verbose := *onlySession != "" && testing.Verbose()
	work := make(chan uint64)
	var wg sync.WaitGroup
	for range max(1, *parallel) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seed := range work {
				transcript, differs, err := playRandomSession(t.Context(), binary, seed, *stepsPerRun, avoid)
				mu.Lock()
				switch {
				case err != nil:
					t.Errorf("session %d: harness: %v", seed, err)
				case differs:
					mismatched = append(mismatched, seed)
					t.Errorf("%s", transcript)
				default:
					clean++
					if verbose {
						t.Logf("%s", transcript)
					}
				}
				mu.Unlock()
			}
		}()
	}
	for _, seed := range seeds {
		work <- seed
	}
	close(work)
	wg.Wait()
	t.Logf("%d sessions from seed %d: %d clean, %d mismatched %v", len(seeds), seeds[0], clean, len(mismatched), mismatched)
}

// playRandomSession plays the session of seed and returns its transcript
// and whether the servers differed.
func playRandomSession(ctx context.Context, binary string, seed uint64, steps int, avoid map[string]bool) (transcript string, differs bool, err error) {
	rng := rand.New(rand.NewPCG(seed, 0x646966667465))
	flags := randomFlags(rng)
	shortLeaseFlags(rng, &flags)
	s, stop, err := startSession(ctx, binary, strconv.FormatUint(seed, 10), flags)
	if err != nil {
		return "", false, err
	}
	defer stop()
	s.lookPast = avoid
	gen := newGenerator(rng, s, avoid)
	start := time.Now()
	for range steps {
		if time.Since(start) > maxSessionTime {
			break
		}
		s.guard()
		if s.mismatch {
			break
		}
		st, ok := gen.next()
		if !ok {
			s.waitForPending()
			continue
		}
		if !s.run(st) {
			break
		}
	}
	s.finish()
	return s.report(), s.mismatch, nil
}
