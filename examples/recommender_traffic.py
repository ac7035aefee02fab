"""Traffic for the recommender's traffic-management walkthrough (README, "Traffic management"):
requests from random users, each carrying its user id as the request parameter ``user_id`` (what
a policy's ``sticky_key: user_id`` reads).

    python examples/recommender_traffic.py [--url 127.0.0.1:8000] [--requests 4000] [--seed 0]
"""

import argparse

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--users", type=int, default=1000, help="user ids 0..N-1 (the model knows 1000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with httpclient.InferenceServerClient(args.url) as client:
        for user in rng.integers(0, args.users, args.requests):
            inp = httpclient.InferInput("USER_ID", [1, 1], "INT64")
            inp.set_data_from_numpy(np.array([[user]], dtype=np.int64))
            client.infer("recommender", [inp], parameters={"user_id": str(user)})


if __name__ == "__main__":
    main()
