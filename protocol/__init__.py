"""Wire types shared by the gateway and the workers. No aiohttp, zmq or model libraries here."""
