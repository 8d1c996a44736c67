// Stock Apache Curator x-discovery reading Atlas's znodes: prints one line per instance.
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryOneTime;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;

public class ListInstances {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryOneTime(100));
        client.start();
        client.blockUntilConnected();
        ServiceDiscovery<Object> discovery = ServiceDiscoveryBuilder.builder(Object.class)
            .client(client)
            .basePath(args[1])
            .serializer(new JsonInstanceSerializer<>(Object.class))
            .build();
        discovery.start();
        for (String name : discovery.queryForNames()) {
            for (ServiceInstance<Object> i : discovery.queryForInstances(name)) {
                System.out.println(name + " " + i.getId() + " " + i.getAddress() + " " + i.getPort()
                    + " " + i.isEnabled() + " " + i.getServiceType() + " " + i.getRegistrationTimeUTC());
            }
        }
        discovery.close();
        client.close();
    }
}
